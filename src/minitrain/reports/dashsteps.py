"""What the dashboard's step selector shows, precomputed per step from a run directory: the
per-token loss histogram (shared bins), its tail, the batch's sentences, the pieces carrying
the most loss, and the tracked rows' Adam m and v. Also the diagnose events' one-line
explanations. Positions are binned here so the page ships counts, not every token."""

from __future__ import annotations

import html
import re

import numpy as np

from minitrain.core.rundir import Run
from minitrain.reports.text import training_sentences

BINS = 40  # histogram bins, shared by every step and every run on one page
TOP = 5  # pieces listed per step


def sig(x, digits: int = 4):
    """A float cut to `digits` significant digits (None for NaN/inf): the page needs no more."""
    x = float(x)
    return float(f"{x:.{digits}g}") if np.isfinite(x) else None


def edges(runs: list[Run]) -> list[float]:
    """Bin edges from 0 to the largest finite per-token loss of any run."""
    top = 0.0
    for run in runs:
        loss = run.token_losses()["loss"]
        loss = loss[np.isfinite(loss)]
        if len(loss):
            top = max(top, float(loss.max()))
    top = max(0.5, np.ceil(top * 2) / 2)  # a round right edge, at least half a nat
    return [sig(x) for x in np.linspace(0.0, top, BINS + 1)]


def histograms(run: Run, bin_edges: list[float]) -> dict:
    """Per step: the positions in each bin, and what the page prints of the tail: the largest
    loss, the mean, how many positions, how many not finite (left out of the bins)."""
    n = len(run.metrics)
    tl = run.token_losses()
    tl = tl[tl["step"] < n]
    loss, step = tl["loss"].astype(float), tl["step"].astype(np.int64)
    ok = np.isfinite(loss)
    e = np.asarray(bin_edges)
    b = np.clip(np.searchsorted(e, loss[ok], side="right") - 1, 0, BINS - 1)
    counts = np.bincount(step[ok] * BINS + b, minlength=n * BINS).reshape(n, BINS)
    top = np.full(n, -np.inf)
    np.maximum.at(top, step[ok], loss[ok])
    total = np.bincount(step[ok], weights=loss[ok], minlength=n)
    npos = np.bincount(step[ok], minlength=n)
    bad = np.bincount(step[~ok], minlength=n)
    return {"counts": counts.tolist(),
            "max": [sig(x) for x in top],
            "mean": [sig(t / c) if c else None for t, c in zip(total, npos)],
            "positions": npos.tolist(), "nonfinite": bad.tolist()}


def sentences(run: Run, words: list[str]) -> dict[int, str]:
    """Each sentence id the run trained on -> its text as HTML, tracked words in <mark>. The
    text is rebuilt from the logged ids as measure.sentence_texts does it (packed rows, whose
    sentences span windows: as text.training_sentences does it)."""
    tl = run.token_losses()
    if not len(tl):
        return {}
    tok, texts = run.decoder(), {}
    if run.config.get("data", {}).get("pack"):
        texts = {sid: tok.decode([tok.bos_id, *pieces]).strip()
                 for sid, pieces in training_sentences(run).items()}
    else:
        tl = tl[np.lexsort((tl["pos"], tl["row"], tl["step"]))]
        key = tl["step"].astype(np.int64) * 65536 + tl["row"]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(tl)]):
            sid = int(tl["sentence"][s])
            if sid not in texts:
                ids = [*tl["token"][s:e].tolist(), int(tl["target"][e - 1])]
                texts[sid] = tok.decode(ids).strip()
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b") if words else None
    out = {}
    for sid, text in texts.items():
        text = html.escape(text)
        out[sid] = pattern.sub(r"<mark>\1</mark>", text) if pattern else text
    return out


def tracked_words(run: Run) -> list[str]:
    """The words a run tracks: the config's, or a synthetic run's tracked token (toy: B)."""
    return list(run.summary.get("tracked_sentences") or run.config["data"].get("tracked_words")
                or [])


def top_pieces(run: Run, k: int = TOP) -> list[list]:
    """Per step, the `k` target pieces with the largest summed loss: [piece, sum, count]."""
    n = len(run.metrics)
    tl = run.token_losses()
    tl = tl[(tl["step"] < n) & np.isfinite(tl["loss"])]
    out: list[list] = [[] for _ in range(n)]
    if not len(tl):
        return out
    key = tl["step"].astype(np.int64) * (int(tl["target"].max()) + 2) + tl["target"] + 1
    uniq, inv = np.unique(key, return_inverse=True)
    sums = np.bincount(inv, weights=tl["loss"].astype(float))
    cnt = np.bincount(inv)
    step = np.zeros(len(uniq), np.int64)
    step[inv] = tl["step"]
    target = np.zeros(len(uniq), np.int64)
    target[inv] = tl["target"]
    tok = run.decoder()
    for i in np.lexsort((-sums, step)):
        row = out[step[i]]
        if len(row) < k:
            row.append([tok.piece(int(target[i])), sig(sums[i]), int(cnt[i])])
    return out


def tracked_loss(run: Run) -> np.ndarray:
    """Per step, the mean token loss of the batch's sentences holding a tracked word (NaN when
    the batch has none): the rare sentences' loss beside the batch's."""
    ids = {i for v in (run.summary.get("tracked_sentences") or {}).values() for i in v}
    n, tl = len(run.metrics), run.token_losses()
    if not ids or not len(tl):
        return np.full(n, np.nan)
    tl = tl[(tl["step"] < n) & np.isin(tl["sentence"], list(ids))]
    total = np.bincount(tl["step"], weights=tl["loss"].astype(float), minlength=n)
    count = np.bincount(tl["step"], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def moments(run: Run) -> list[dict]:
    """Every tracked row's m (L2 norm) and v (mean) per step."""
    out = []
    for piece, table in run.tracked_rows():
        recs = [m["tracked"].get(piece, {}).get(table, {}) for m in run.moments]
        for key, what in (("m_norm", "m"), ("v_mean", "v")):
            y = [sig(r[key]) if r.get(key) is not None else None for r in recs]
            if any(v is not None for v in y):
                out.append({"label": f"{what} [{piece} {table}]", "y": y})
    return out


def events(run: Run, blind: bool = False) -> list[dict]:
    """The spikes `diagnose` finds, each with one line saying what carried it."""
    from minitrain.reports.diagnose import diagnose

    out = []
    for s in diagnose(run.path)["spikes"]:
        text = (f"step {s['step']}: {s['kind']} spike, x{s['ratio']:.3g} the median; norm "
                f"{s['grad_norm_pre_clip']:.3g} -> {s['grad_norm_post_clip']:.3g}")
        if not blind:
            text += f" (clip {'off' if s['clip'] is None else s['clip']})"
        text += f"; batch loss {s['loss']:.3g}" if s["loss"] is not None else ""
        if s["loss_carriers"]:
            c = s["loss_carriers"][0]
            usual = "never a target before" if c["usual_loss"] is None else \
                f"usually {c['usual_loss']:.2f}"
            text += f"; most loss on {c['piece']!r} ({c['loss_sum']:.3g} nats, {usual})"
        if s["batch"].get("words"):
            held = {w: n for w, n in s["batch"]["words"].items() if n}
            if held:
                text += "; tracked in the batch: " + ", ".join(f"{w} x{n}" for w, n in held.items())
        out.append({"step": s["step"], "kind": s["kind"], "text": text})
    return out


def step_data(run: Run, bin_edges: list[float]) -> dict:
    """Everything the step selector shows for one run (None where the run has no log of it)."""
    has_tokens = len(run.token_losses()) > 0
    return {
        "name": run.name, "steps": len(run.metrics),
        "hist": histograms(run, bin_edges) if has_tokens else None,
        "batch": [b.get("sentence_ids", []) for b in run.batches],
        "sources": [b["sources"] for b in run.batches] if run.batches and
        "sources" in run.batches[0] else None,
        "sentences": sentences(run, tracked_words(run)) if has_tokens else {},
        "top": top_pieces(run) if has_tokens else None,
        "moments": moments(run),
    }
