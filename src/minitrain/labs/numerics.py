"""The numerics lab's report: the same run with the forward pass in fp32, bf16 and fp16 (loss
scaling), clip off and on. How far each low-precision run drifts from its fp32 twin, whether
any step overflowed, and whether the arrival's spike and damage change."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.rundir import Run
from minitrain.labs.common import Runs, clip_label, publish
from minitrain.reports.measure import norm_ratios, whole_set_around

NAME, FOLDER, BLOCKS = "numerics", "numerics", ("numerics",)
RUNS = Runs("corpus", "gpt", differ=("train.dtype",))


def _key(run: Run) -> tuple:
    return run.config["optimizer"]["grad_clip"] is not None, run.config["train"]["dtype"]


def measure(run: Run, fp32: Run) -> dict:
    s = run.config["data"]["arrive_step"]
    loss, ref = run.column("loss"), fp32.column("loss")
    n = min(len(loss), len(ref), s)
    scales = run.column("loss_scale")
    around = whole_set_around(run, s) if s < len(run.metrics) else {}
    return {
        "run": f"{run.config['train']['dtype']}, {clip_label(run)}",
        "status": run.summary["status"],
        "steps skipped (overflow)": int(sum(bool(m.get("skipped")) for m in run.metrics)),
        "at steps": ", ".join(str(m["step"]) for m in run.metrics if m.get("skipped")) or "-",
        "smallest loss scale": float(np.nanmin(scales)) if np.isfinite(scales).any() else None,
        "batch loss vs fp32 before the arrival, largest |diff|":
            float(np.max(np.abs(loss[:n] - ref[:n]))),
        "whole-set loss before the arrival": around.get("whole_before"),
        "norm ratio at the arrival": float(norm_ratios(run)[s]) if s < len(run.metrics)
        else None,
        "whole-set rise": around.get("whole_rise"),
        "final whole-set loss": run.summary.get("final_train_loss"),
    }


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    runs = {_key(r): r for r in RUNS.load(folder, NAME)}
    rows = []
    for clipped in (False, True):
        fp32 = runs.get((clipped, "float32"))
        for dtype in ("float32", "bfloat16", "float16"):
            if fp32 is not None and (clipped, dtype) in runs:
                rows.append(measure(runs[clipped, dtype], fp32))
    text = publish(rows, "Each low-precision run against the fp32 run with the same clip; the "
                   "forward pass only is in low precision (weights, gradients and Adam's moments "
                   "stay fp32).", "numerics", page)
    return {"blocks": {"numerics": text}, "measured": rows}
