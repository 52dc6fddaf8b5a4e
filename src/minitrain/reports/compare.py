"""Side-by-side report of two run directories: a terminal summary and one PNG of panels.

Reads run directories only. The spike step is found from the data, not configured: the step
after warm-up whose pre-clip gradient norm is the largest multiple of the median of the 50
steps before it, in whichever run has the larger such multiple.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.rundir import Run, RunDirError, load_run

WINDOW = 50  # steps in the baseline median


def norm_ratios(run: Run, window: int = WINDOW) -> np.ndarray:
    """Pre-clip norm over the median of the `window` steps before; NaN during warm-up."""
    g = run.column("grad_norm_pre_clip")
    start = max(run.config["optimizer"]["warmup_steps"], 1)
    out = np.full(len(g), np.nan)
    for i in range(start, len(g)):
        base = np.nanmedian(g[max(0, i - window):i])
        out[i] = g[i] / base if base > 0 else np.nan
    return out


def spike_step(a: Run, b: Run) -> int | None:
    best = None
    for run in (a, b):
        r = norm_ratios(run)
        if np.isfinite(r).any():
            i = int(np.nanargmax(r))
            if best is None or r[i] > best[1]:
                best = (i, r[i])
    return None if best is None else best[0]


def sentence_texts(run: Run, step: int) -> list[tuple[int, str]]:
    """(sentence id, text) for each row of a step's batch, rebuilt from the logged token ids."""
    tok, tl = run.decoder(), run.token_losses(step)
    texts = []
    for row in sorted(set(tl["row"].tolist())):
        recs = tl[tl["row"] == row]
        recs = recs[np.argsort(recs["pos"], kind="stable")]
        ids = [*recs["token"].tolist(), int(recs["target"][-1])]
        texts.append((int(recs["sentence"][0]), tok.decode(ids).strip()))
    return texts


def top_tokens(run: Run, step: int, k: int = 8) -> list[tuple[str, float, int]]:
    """(piece, summed loss, count) of the targets carrying most loss at `step`."""
    tok, tl = run.decoder(), run.token_losses(step)
    sums: dict[int, list] = {}
    for t, loss in zip(tl["target"].tolist(), tl["loss"].tolist()):
        s = sums.setdefault(t, [0.0, 0])
        s[0] += loss
        s[1] += 1
    ranked = sorted(sums.items(), key=lambda kv: -kv[1][0])[:k]
    return [(tok.piece(t), s, n) for t, (s, n) in ranked]


def v_recovery(run: Run, piece: str, step: int, table: str = "wte",
               factor: float = 2.0) -> int | None:
    """Steps after `step` until the row's v (mean) is back within `factor`x its median over
    the 20 steps before; None if it did not come back within the run."""
    trace = run.v_trace(piece, table)
    if step >= len(trace) or step < 1:
        return None
    before = _median_before(trace, step)
    if not np.isfinite(before) or before <= 0:
        return None
    for j in range(step, len(trace)):
        if trace[j] <= factor * before:
            return j - step
    return None


def _whole_back(whole: np.ndarray, step: int, before: float, rise: float) -> int | str | None:
    """Steps after `step` until the whole-set loss is back below before + 10% of the rise,
    counted from its worst point on; 'no rise' when it never went up."""
    if not np.isfinite(rise) or rise <= 0:
        return "no rise"
    worst = step + int(np.nanargmax(whole[step:step + 150]))
    for j in range(worst, len(whole)):
        if np.isfinite(whole[j]) and whole[j] <= before + 0.1 * rise:
            return j - step
    return None


def densest_batch(run: Run) -> dict:
    """The first batch holding the most tracked-word sentences, and its norm ratio."""
    counts = np.array([sum(b.get("words", {}).values()) for b in run.batches])
    if not len(counts) or counts.max() == 0:
        return {}
    i = int(np.argmax(counts))
    return {"most tracked sentences in a batch": int(counts[i]), "  at step": i,
            "  its norm ratio": norm_ratios(run)[i] if i < len(run.metrics) else np.nan}


def v_around(run: Run, piece: str, table: str, step: int) -> tuple[float, float]:
    """(v before: median of the 20 steps before `step`, v at `step`) for a tracked row."""
    trace = run.v_trace(piece, table)
    return _median_before(trace, step), trace[step]


def _median_before(trace: np.ndarray, step: int, n: int = 20) -> float:
    """Median of the finite values in the n steps before `step` (nan when there are none:
    an SGD run has no v)."""
    window = trace[max(0, step - n):step]
    window = window[np.isfinite(window)]
    return float(np.median(window)) if len(window) else np.nan


def whole_set_around(run: Run, step: int) -> dict:
    """Whole-set loss before `step`, worst within 150 steps from it, the rise, and when back."""
    whole = run.column("train_loss")
    before = whole[:step][np.isfinite(whole[:step])]
    after = whole[step:step + 150]
    out = {"whole_before": before[-1] if len(before) else np.nan,
           "whole_worst_after": np.nanmax(after) if np.isfinite(after).any() else np.nan}
    out["whole_rise"] = out["whole_worst_after"] - out["whole_before"]
    out["whole back within 10% of rise, steps"] = _whole_back(whole, step, out["whole_before"],
                                                              out["whole_rise"])
    return out


def summarise(run: Run, step: int) -> dict:
    g, post = run.column("grad_norm_pre_clip"), run.column("grad_norm_post_clip")
    loss, whole = run.column("loss"), run.column("train_loss")
    n = len(g)
    s = {"status": run.summary.get("status"), "steps": n}
    if step >= n:
        return s
    base = np.nanmedian(g[max(0, step - WINDOW):step]) if step else np.nan
    around = whole_set_around(run, step)
    s.update({
        "grad_norm_pre_clip": g[step], "baseline_median": base, "ratio": g[step] / base,
        "grad_norm_post_clip": post[step], "clip_factor": run.metrics[step]["clip_factor"],
        "loss_before": np.nanmean(loss[max(0, step - 10):step]), "loss_at": loss[step],
        "loss_next_20_max": np.nanmax(loss[step + 1:step + 21]) if step + 1 < n else np.nan,
        "whole_before": around["whole_before"],
        "whole_worst_after": around["whole_worst_after"],
        "whole_final": whole[np.isfinite(whole)][-1] if np.isfinite(whole).any() else np.nan,
        "post_clip_max": np.nanmax(post),
        "clipped_steps_before": float(np.mean(post[:step] < g[:step] * (1 - 1e-9)))
        if step else np.nan,
    })
    s["whole_rise"] = around["whole_rise"]
    s["whole back within 10% of rise, steps"] = around["whole back within 10% of rise, steps"]
    s.update(densest_batch(run))
    for piece, table in run.tracked_rows():
        before, at = v_around(run, piece, table, step)
        # a row with no gradient before (an input piece never seen) jumps from exactly 0
        s[f"v jump x [{piece} {table}]"] = "from 0" if before == 0 else at / before
        s[f"v back within 2x, steps [{piece} {table}]"] = v_recovery(run, piece, step, table)
    return s


def markdown(result: dict) -> str:
    """The summary table as Markdown, for pages whose numbers must come from the runs."""
    sa, sb = result["a_summary"], result["b_summary"]
    lines = [f"Spike step: {_fmt(result['spike_step'])}", "",
             f"| | {result['a']} | {result['b']} |", "|---|---:|---:|"]
    for key in dict.fromkeys([*sa, *sb]):
        lines.append(f"| {key} | {_fmt(sa.get(key))} | {_fmt(sb.get(key))} |")
    return "\n".join(lines)


def update_page(page: str | Path, key: str, text: str) -> None:
    """Replace the block between `<!-- measured:KEY -->` and `<!-- /measured:KEY -->`."""
    page = Path(page)
    try:
        src = page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{page}: cannot read the page: {e}") from None
    start, end = f"<!-- measured:{key} -->", f"<!-- /measured:{key} -->"
    if start not in src or end not in src:
        raise RunDirError(f"{page}: no '{start}' ... '{end}' block to fill")
    head, rest = src.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{text}\n{end}{tail}", encoding="utf-8")


def report(a_path, b_path, out: str | Path | None = None, page: str | Path | None = None) -> dict:
    a, b = load_run(a_path), load_run(b_path)
    step = spike_step(a, b)
    result = {"spike_step": step, "a": a.name, "b": b.name}
    if step is None:
        result["a_summary"], result["b_summary"] = summarise(a, 0), summarise(b, 0)
    else:
        result["a_summary"], result["b_summary"] = summarise(a, step), summarise(b, step)
    _print(a, b, step, result)
    out_dir = Path(out) if out else b.path
    png = out_dir / f"compare-{a.name}-vs-{b.name}.png"
    from minitrain.reports.plots import compare_panels

    compare_panels(a, b, step, png)
    result["png"] = str(png)
    print(f"\npicture: {png}")
    if page:
        update_page(page, f"{a.name}-vs-{b.name}", markdown(result))
        print(f"measured block updated in {page}")
    return result


def _fmt(x) -> str:
    if x is None:
        return "never"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, str):
        return x
    return "nan" if not np.isfinite(x) else f"{x:.4g}"


def _print(a: Run, b: Run, step, result) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    title = f"spike step {step} (largest pre-clip norm / median of the {WINDOW} steps before)"
    table = Table(title=title if step is not None else "no step after warm-up to compare")
    table.add_column("")
    table.add_column(a.name, justify="right")
    table.add_column(b.name, justify="right")
    sa, sb = result["a_summary"], result["b_summary"]
    keys = list(dict.fromkeys([*sa, *sb]))
    for key in keys:
        table.add_row(key, _fmt(sa.get(key)), _fmt(sb.get(key)))
    con.print(table)
    if step is None or step >= len(b.batches):
        return
    batch = b.batches[step]
    con.print(f"\n[bold]batch at step {step}[/] (tracked words: {batch.get('words')}, "
              f"pieces: {batch.get('pieces')})")
    for sid, text in sentence_texts(b, step):
        con.print(f"  [{sid:>4}] {text}")
    for run in (a, b):
        con.print(f"\n[bold]top target pieces by summed loss at step {step}, {run.name}[/]")
        for piece, total, n in top_tokens(run, step):
            con.print(f"  {piece!r:>14}  {total:8.3f} nats over {n}")
