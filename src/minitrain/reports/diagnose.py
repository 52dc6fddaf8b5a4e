"""`minitrain diagnose RUN`: find the spikes of one run and what carried them, from its run
directory alone. Works on any run: no word, step or model size is assumed.

Spikes of the pre-clip gradient norm and of the batch loss are found by measure.detect;
reports/postmortem.py fills the package's post-mortem template for the largest one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from minitrain.core.rundir import Run, clean, load_run
from minitrain.reports.measure import (
    detect,
    judged_from,
    sentence_texts,
    suggest_clip,
    thresholds,
    v_around,
    v_recovery,
    whole_set_around,
)
from minitrain.reports.pages import fmt


def _words(pieces: list[str]) -> list[str]:
    """For each piece, the whole word it belongs to. A piece starting with '▁' opens a word;
    punctuation and special pieces ([EOS]) stand alone (the pre-tokenizer splits them off)."""
    def alone(p):
        return (p.startswith("[") and p.endswith("]")) or not any(c.isalnum() for c in p)

    starts, start = [], 0
    for i, p in enumerate(pieces):
        if i == 0 or p.startswith("▁") or alone(p) or alone(pieces[i - 1]):
            start = i
        starts.append(start)
    words = []
    for i, s in enumerate(starts):
        end = next((j for j in range(i + 1, len(pieces)) if starts[j] != s), len(pieces))
        words.append("".join(pieces[s:end]).lstrip("▁"))
    return words


def loss_carriers(run: Run, step: int, k: int = 6) -> list[dict]:
    """Target pieces carrying the most loss at `step`, against their usual loss before it, and
    the words they sit in."""
    tl = run.token_losses()
    if not len(tl):  # not logged (train.extra_logs)
        return []
    tok = run.decoder()
    now = tl[tl["step"] == step]
    past = tl[(tl["step"] < step) & (tl["step"] >= max(0, step - 200))]
    words: dict[int, set[str]] = {}
    for row in sorted(set(now["row"].tolist())):
        recs = now[now["row"] == row]
        recs = recs[np.argsort(recs["pos"], kind="stable")]
        targets = recs["target"].tolist()
        pieces = [tok.piece(t) for t in targets]
        for t, w in zip(targets, _words(pieces)):
            if t not in (tok.eos_id, tok.pad_id):
                words.setdefault(t, set()).add(w)
    rows = []
    for t in set(now["target"].tolist()):
        sel = now["loss"][now["target"] == t]
        before = past["loss"][past["target"] == t]
        rows.append({"piece": tok.piece(t), "loss_sum": float(sel.sum()), "count": len(sel),
                     "loss_mean": float(sel.mean()),
                     "usual_loss": float(before.mean()) if len(before) else None,
                     "words": sorted(words.get(t, set()))})
    return sorted(rows, key=lambda r: -r["loss_sum"])[:k]


def norm_carriers(run: Run, step: int, k: int = 3) -> dict:
    """Parameter tensors and embedding rows by share of the squared pre-clip norm."""
    if step >= len(run.moments):
        return {}
    mom, tok = run.moments[step], run.decoder()
    total = sum(t["grad_norm"] ** 2 for t in mom["tensors"].values()) or 1.0
    tensors = sorted(((n, t["grad_norm"] ** 2 / total) for n, t in mom["tensors"].items()),
                     key=lambda x: -x[1])[:k]
    rows = [{"piece": tok.piece(i), "share": n * n / total} for i, n in mom["top_grad_rows"][:k]]
    return {"tensors": [{"name": n, "share": s} for n, s in tensors], "embedding_rows": rows}


def moments_at(run: Run, step: int) -> list[dict]:
    out = []
    for piece, table in run.tracked_rows():
        before, at = v_around(run, piece, table, step)
        out.append({"piece": piece, "table": table, "v_before": before, "v_at": at,
                    "v_jump": None if not before else at / before,
                    "v_back_within_2x_steps": v_recovery(run, piece, step, table)})
    return out


def describe(run: Run, event: dict, kind: str) -> dict:
    step, m = event["step"], run.metrics[event["step"]]
    around = whole_set_around(run, step)
    batch = run.batches[step] if step < len(run.batches) else {}
    return {
        "kind": kind, "step": step, "ratio": event["ratio"], "z": event["z"],
        "loss": m["loss"], "grad_norm_pre_clip": m["grad_norm_pre_clip"],
        "grad_norm_post_clip": m["grad_norm_post_clip"], "clip_factor": m["clip_factor"],
        "clip": run.config["optimizer"].get("grad_clip"),
        "suggested_clip": suggest_clip(run, step),  # p90 of the norms just before it
        "batch": {"sentence_ids": batch.get("sentence_ids"), "words": batch.get("words"),
                  "sources": batch.get("sources"),  # mixture runs only
                  "texts": [t for _, t in sentence_texts(run, step)]},
        "loss_carriers": loss_carriers(run, step),
        "norm_carriers": norm_carriers(run, step),
        "moments": moments_at(run, step),
        "whole_loss": {"before": around["whole_before"],
                       "worst_after": around["whole_worst_after"],
                       "back_within_10pct_steps": around["whole back within 10% of rise, steps"]},
    }


def diagnose(path: str | Path | Run, **overrides) -> dict:
    """Spikes of the run at `path` (or of a loaded Run), thresholds from its config unless
    overridden (window=, z=, min_ratio=, merge=)."""
    run = path if isinstance(path, Run) else load_run(path)
    th = thresholds(run, **overrides)
    start = judged_from(run, th)
    spikes = []
    for kind, key in (("grad_norm", "grad_norm_pre_clip"), ("loss", "loss")):
        for ev in detect(run.column(key), start, th):
            spikes.append((kind, ev))
    # one entry per step: a loss spike at the step of a norm spike is the same event
    by_step: dict[int, dict] = {}
    for kind, ev in sorted(spikes, key=lambda x: x[0] != "grad_norm"):
        if ev["step"] not in by_step:
            by_step[ev["step"]] = describe(run, ev, kind)
        else:
            by_step[ev["step"]]["kind"] += "+" + kind
    return {"run": str(run.path), "status": run.summary.get("status"),
            "steps": len(run.metrics), "thresholds": asdict(th),
            "suggested_clip": suggest_clip(run),  # from the run's last 100 norms
            "spikes": [by_step[s] for s in sorted(by_step)]}


def to_json(result: dict) -> str:
    return json.dumps(clean(result), indent=2, ensure_ascii=False)


def print_report(result: dict) -> None:
    from rich.console import Console

    con, th = Console(), result["thresholds"]
    con.soft_wrap = not con.is_terminal  # piped or redirected: whole lines, not cut at 80
    con.print(f"[bold]{result['run']}[/]: {result['status']}, {result['steps']} steps; spike = "
              f">= {th['min_ratio']}x and >= {th['z']} robust sd above the median of the "
              f"{th['window']} steps before")
    if result.get("suggested_clip") is not None:
        con.print(f"suggested clip: {result['suggested_clip']:.3g} (the 90th percentile of the "
                  "pre-clip norm over the last 100 steps)")
    if result.get("cause"):
        con.print(f"cause: [bold]{result['cause']['name']}[/]")
        for line in result["cause"]["evidence"]:
            con.print(f"  - {line}")
    if not result["spikes"]:
        con.print("no spike found")
    for s in result["spikes"]:
        clip = "off" if s["clip"] is None else s["clip"]
        con.print(f"\n[bold]step {s['step']}[/] ({s['kind']}): x{s['ratio']:.1f} the median, "
                  f"loss {fmt(s['loss'], '.4g')}, norm {s['grad_norm_pre_clip']:.4g} -> "
                  f"{s['grad_norm_post_clip']:.4g} after clip ({clip})")
        if s["suggested_clip"] is not None:
            con.print(f"  a clip at {s['suggested_clip']:.3g} (p90 of the 100 norms before) "
                      f"would have cut it x{s['suggested_clip'] / s['grad_norm_pre_clip']:.2g}")
        con.print(f"  batch {s['batch']['sentence_ids']}  tracked: {s['batch']['words']}")
        if s["batch"].get("sources"):
            src = s["batch"]["sources"]
            con.print("  sources: " + ", ".join(f"{n} {src.count(n)}" for n in dict.fromkeys(src)))
        for text in s["batch"]["texts"]:
            con.print(f"    {text}")
        con.print("  loss carried by:")
        for c in s["loss_carriers"]:
            usual = "never a target before" if c["usual_loss"] is None else \
                f"usually {c['usual_loss']:.2f}"
            con.print(f"    {c['piece']!r:>12} {c['loss_sum']:8.2f} nats over {c['count']} "
                      f"({usual}) in {', '.join(c['words'])}")
        nc = s["norm_carriers"]
        if nc:
            con.print("  norm carried by: " + ", ".join(
                f"{t['name']} {t['share']:.0%}" for t in nc["tensors"]) + "; rows " + ", ".join(
                f"{r['piece']!r} {r['share']:.0%}" for r in nc["embedding_rows"]))
        for m in s["moments"]:
            jump = "from 0" if m["v_jump"] is None else f"x{m['v_jump']:.3g}"
            back = m["v_back_within_2x_steps"]
            con.print(f"  v[{m['piece']} {m['table']}] jumped {jump}; back within 2x: "
                      f"{'not within the run' if back is None else f'{back} steps'}")
        w = s["whole_loss"]
        back = w["back_within_10pct_steps"]
        back = "not within the run" if back is None else \
            f"after {back} steps" if isinstance(back, int) else back
        con.print(f"  whole-set loss {fmt(w['before'], '.4g')} -> worst "
                  f"{fmt(w['worst_after'], '.4g')}; back within 10% of the rise: {back}")


def moment_decay(run: Run, step: int, k: int = 10) -> dict:
    """Adam's memory, read off the run after `step`: on a step where a tracked row gets no
    gradient, m = b1 m and v = b2 v exactly, so the logged ratios must equal the betas; and the
    row's m over the first `k` steps against the b1^k a spike alone would leave."""
    b1, b2 = run.config["optimizer"]["betas"]
    rows = []
    for piece, table in run.tracked_rows():
        recs = [m["tracked"][piece][table] for m in run.moments]
        g = np.array([r["grad_norm"] for r in recs])
        mn = np.array([r["m_norm"] for r in recs])
        v = np.array([r.get("v_mean", np.nan) for r in recs])
        quiet = [t for t in range(step + 1, len(recs)) if g[t] == 0 and mn[t - 1] > 0]
        m_ratio, v_ratio = mn[quiet] / mn[[t - 1 for t in quiet]], \
            v[quiet] / v[[t - 1 for t in quiet]]
        rows.append({
            "piece": piece, "table": table, "steps_after": len(recs) - step - 1,
            "quiet_steps": len(quiet),
            "m_ratio_median": float(np.median(m_ratio)) if quiet else None,
            "m_ratio_max_error": float(np.max(np.abs(m_ratio - b1))) if quiet else None,
            "v_ratio_median": float(np.median(v_ratio)) if quiet else None,
            "v_ratio_max_error": float(np.max(np.abs(v_ratio - b2))) if quiet else None,
            "trace": [{"k": j, "m_over_m_spike": float(mn[step + j] / mn[step]),
                       "b1_k": b1 ** j, "grad": bool(g[step + j] > 0)}
                      for j in range(min(k + 1, len(recs) - step)) if mn[step] > 0],
        })
    return {"run": str(run.path), "name": run.name, "step": step, "b1": b1, "b2": b2,
            "rows": rows}


def moment_decay_markdown(d: dict, label: str | None = None) -> str:
    """The page block of `moment_decay`; the run is called `label` (default: its folder)."""
    lines = [f"{label or d['name']}, after its spike at step {d['step']} (`minitrain diagnose "
             f"{d['run']} --moments-page ...`). A row is *quiet* on a step when "
             f"its gradient is exactly 0; then `m` must shrink by b1 = {d['b1']} and `v` by "
             f"b2 = {d['b2']}.", "",
             "| row | steps after | quiet steps | median m ratio | max error vs b1 | "
             "median v ratio | max error vs b2 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        def f(x, spec):
            return fmt(x, spec, missing="–")
        lines.append(f"| `{r['piece']}` {r['table']} | {r['steps_after']} | {r['quiet_steps']} | "
                     f"{f(r['m_ratio_median'], '.6f')} | {f(r['m_ratio_max_error'], '.1e')} | "
                     f"{f(r['v_ratio_median'], '.6f')} | {f(r['v_ratio_max_error'], '.1e')} |")
    for r in d["rows"]:
        if r["table"] != "wte" or not r["trace"]:
            continue
        lines += ["", f"`m` of the `{r['piece']}` input row after the spike, as a fraction of "
                  "its value at the spike, against b1^k (what is left of the spike's own "
                  "contribution):", "", "| k | m / m at spike | b1^k | row had a gradient |",
                  "|---:|---:|---:|---|"]
        lines += [f"| {t['k']} | {t['m_over_m_spike']:.4f} | {t['b1_k']:.4f} | "
                  f"{'yes' if t['grad'] else 'no'} |" for t in r["trace"]]
    return "\n".join(lines) + "\n"
