"""`minitrain diagnose RUN`: find the spikes of one run and what carried them, from its run
directory alone. Works on any run: no word, step or model size is assumed.

Spikes of the pre-clip gradient norm and of the batch loss are found by measure.detect; the
post-mortem fills the package's template (templates/postmortem.md) for the largest one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from minitrain.core.rundir import Run, clean, load_run
from minitrain.reports.measure import (
    detect,
    judged_from,
    sentence_texts,
    summarise,
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


def diagnose(path: str | Path, **overrides) -> dict:
    """Spikes of the run at `path`, thresholds from its config unless overridden (window=,
    z=, min_ratio=, merge=)."""
    run = load_run(path)
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
            "spikes": [by_step[s] for s in sorted(by_step)]}


def to_json(result: dict) -> str:
    return json.dumps(clean(result), indent=2, ensure_ascii=False)


def print_report(result: dict) -> None:
    from rich.console import Console

    con, th = Console(), result["thresholds"]
    con.print(f"[bold]{result['run']}[/]: {result['status']}, {result['steps']} steps; spike = "
              f">= {th['min_ratio']}x and >= {th['z']} robust sd above the median of the "
              f"{th['window']} steps before")
    if not result["spikes"]:
        con.print("no spike found")
    for s in result["spikes"]:
        clip = "off" if s["clip"] is None else s["clip"]
        con.print(f"\n[bold]step {s['step']}[/] ({s['kind']}): x{s['ratio']:.1f} the median, "
                  f"loss {s['loss']}, norm {s['grad_norm_pre_clip']:.4g} -> "
                  f"{s['grad_norm_post_clip']:.4g} after clip ({clip})")
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
        con.print(f"  whole-set loss {w['before']:.4g} -> worst {w['worst_after']:.4g}; back: "
                  f"{w['back_within_10pct_steps']}")


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


TEMPLATE = "templates/postmortem.md"  # package data of minitrain (pyproject)


def postmortem(result: dict, reference: str | Path | None = None,
               template: Path | None = None) -> str:
    """The post-mortem template (the package's own unless `template` is given) with every
    measured placeholder filled for the run's largest spike; the judgement ones
    ({root_cause}, {fix_1}, ...) are left for the author."""
    if template is None:
        from importlib.resources import files

        text = files("minitrain").joinpath(TEMPLATE).read_text(encoding="utf-8")
    else:
        text = Path(template).read_text(encoding="utf-8")
    if not result["spikes"]:
        return f"# Post-mortem: {result['run']}\n\nNo spike found (thresholds: " \
               f"{result['thresholds']}).\n"
    s = max(result["spikes"], key=lambda x: x["ratio"])
    run, step = load_run(result["run"]), s["step"]
    b, cfg = summarise(run, step), run.config
    m = run.metrics
    upd = run.column("update_norm")
    tl = run.token_losses(step)
    top = s["loss_carriers"][0] if s["loss_carriers"] else None
    b1, b2 = cfg["optimizer"]["betas"]
    v = {
        "run_b": run.name, "spike_step": step, "status": result["status"],
        "diverged_at_step": run.summary.get("diverged_at_step"),
        "warmup_end": cfg["optimizer"]["warmup_steps"], "last_step": len(m) - 1,
        "lr_peak": cfg["optimizer"]["lr"], "lr_at_spike": m[step]["lr"],
        "arrive_step": cfg["data"].get("arrive_step", "n/a"), "sampler": cfg["data"]["sampler"],
        "grad_clip": cfg["optimizer"]["grad_clip"], "betas": cfg["optimizer"]["betas"], "b2": b2,
        "v_memory_steps": round(1 / (1 - b2)),
        "adam_bound": f"{(1 - b1) / np.sqrt(1 - b2):.3g} x lr",
        "batch_sentence_ids": s["batch"]["sentence_ids"],
        "tracked_word_counts": s["batch"]["words"],
        "tracked_piece_counts": run.batches[step].get("pieces"),
        "batch_texts": " / ".join(s["batch"]["texts"]),
        "top_tokens": ", ".join(f"{c['piece']} ({c['loss_sum']:.1f} nats over {c['count']})"
                                for c in s["loss_carriers"][:3]),
        "top_piece_share": f"{top['loss_sum'] / float(tl['loss'].sum()):.0%}" if top else "n/a",
        "top_tensors": ", ".join(f"{t['name']} ({t['share']:.0%})"
                                 for t in s["norm_carriers"].get("tensors", [])),
        "top_tensor_share": s["norm_carriers"]["tensors"][0]["share"]
        if s["norm_carriers"] else "n/a",
        "top_grad_rows": ", ".join(f"{r['piece']} ({r['share']:.1%})"
                                   for r in s["norm_carriers"].get("embedding_rows", [])),
        "update_norm_before": np.nanmedian(upd[max(0, step - 50):step]),
        "update_norm_at": upd[step], "update_norm_after": np.nanmedian(upd[step + 1:step + 51]),
        "weight_norm_before": m[step - 1]["weight_norm"] if step else "n/a",
        "weight_norm_after": m[min(len(m) - 1, step + 50)]["weight_norm"],
        "val_loss_final": run.summary.get("final_val_loss"),
        "whole_loss_before": b.get("whole_before"), "whole_loss_worst": b.get("whole_worst_after"),
        "whole_loss_final": b.get("whole_final"), "whole_rise": b.get("whole_rise"),
    }
    for key in ("grad_norm_pre_clip", "grad_norm_post_clip", "clip_factor", "ratio",
                "baseline_median", "loss_at", "loss_before", "loss_next_20_max",
                "clipped_steps_before"):
        v[key] = b.get(key)
    words = [sum(x.get("words", {}).values()) for x in run.batches]
    here = words[step] if step < len(words) else 0
    i = int(np.argmax(tl["loss"])) if len(tl) else None
    clip = cfg["optimizer"]["grad_clip"]
    v.update(
        clip_over_baseline=clip / b["baseline_median"] if clip and b.get("baseline_median")
        else "n/a (no clip)",
        first_seen_step=next((k for k, w in enumerate(words) if w), "never"),
        same_count_steps=sum(w >= here for w in words) if here else "n/a",
        max_token_loss=tl["loss"][i] if i is not None else "n/a",
        max_token_sentence=tl["sentence"][i] if i is not None else "n/a",
        max_token_pos=tl["pos"][i] if i is not None else "n/a",
        lr_schedule="constant" if cfg["optimizer"]["min_lr_ratio"] == 1.0 else
        f"cosine to {cfg['optimizer']['min_lr_ratio']} x lr",
        tracked_row_grad_norm="; ".join(
            f"{p} {t}: {_fmt(run.moments[step]['tracked'][p][t]['grad_norm'])}"
            for p, t in run.tracked_rows()) if step < len(run.moments) else "n/a",
        m_before="; ".join(
            f"{p} {t}: {_fmt(run.moments[step - 1]['tracked'][p][t]['m_norm'])}"
            for p, t in run.tracked_rows()) if 0 < step <= len(run.moments) else "n/a",
        m_at="; ".join(f"{p} {t}: {_fmt(run.moments[step]['tracked'][p][t]['m_norm'])}"
                       for p, t in run.tracked_rows()) if step < len(run.moments) else "n/a",
    )
    worst = run.column("train_loss")[step:step + 150]
    v["whole_worst_step"] = step + int(np.nanargmax(worst)) if np.isfinite(worst).any() else "n/a"
    rows = s["moments"]
    fmt_rows = lambda key: "; ".join(f"{r['piece']} {r['table']}: {_fmt(r[key])}" for r in rows)  # noqa: E731
    v.update(v_before=fmt_rows("v_before"), v_at=fmt_rows("v_at"), v_jump=fmt_rows("v_jump"),
             v_recovery_steps=fmt_rows("v_back_within_2x_steps"))
    if reference:
        a = summarise(load_run(reference), step)
        v["config_diff"] = "; ".join(_diff(load_run(reference).config, cfg)) or "none"
        v.update(run_a=Path(reference).name, whole_loss_before_a=a.get("whole_before"),
                 whole_loss_worst_a=a.get("whole_worst_after"),
                 whole_rise_a=a.get("whole_rise"), whole_loss_final_a=a.get("whole_final"),
                 val_loss_final_a=load_run(reference).summary.get("final_val_loss"))
    filled = {k: _fmt(x) for k, x in v.items()}
    return re.sub(r"\{([a-z0-9_]+)\}", lambda mt: filled.get(mt.group(1), mt.group(0)), text)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(a.keys() | b.keys()):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x} -> {y}")
    return out


def _fmt(x) -> str:
    return fmt(x, ".4g", nonfinite="n/a")
