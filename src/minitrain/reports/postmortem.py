"""The post-mortem of a run's largest spike: the package's template (templates/postmortem.md)
with every measured placeholder filled from `diagnose`'s result and the run directory."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from minitrain.core.rundir import load_run
from minitrain.reports.measure import summarise
from minitrain.reports.pages import fmt

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
        "adam_saturation": f"{(1 - b1) / np.sqrt(1 - b2):.3g} x lr",
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
