"""The numerics lab's report: the same run with the forward pass in fp32, bf16 and fp16 (loss
scaling), clip off and on. How far each low-precision run drifts from its fp32 twin, whether
any step overflowed, and whether the arrival's spike and damage change."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.rundir import Run
from minitrain.labs.common import Runs, clip_label, publish
from minitrain.reports.measure import MIN_RISE, norm_ratios, whole_set_around
from minitrain.reports.pages import update_page

NAME, FOLDER, BLOCKS = "numerics", "numerics", ("numerics", "numerics-reading")
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


FLAGS = ("f16c", "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def machine() -> str:
    """The CPU the report ran on, as far as reduced precision cares: the low-precision
    matmuls' kernels are picked by the instruction sets torch detects, and fp16's narrow range
    turns their different roundings into different overflow steps."""
    import platform

    import torch

    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        info = ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.startswith("model name")), platform.processor() or "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))
    has = ", ".join(f for f in FLAGS if f in flags) or "none of them"
    return (f"Machine: {model}, torch {torch.__version__}, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}; of {', '.join(FLAGS)} it has: {has}.")


def reading(runs: dict, rows: dict) -> list[str]:
    """What the table says, from its numbers (one seed: a change, not a law)."""
    out = []

    def rise(key):
        return rows[key]["whole-set rise"] if key in rows else None

    for clipped in (False, True):
        f32, b16, f16 = (rise((clipped, d)) for d in ("float32", "bfloat16", "float16"))
        label = "with the clip" if clipped else "without the clip"
        if f32 is not None and b16 is not None:
            same = (f32 > MIN_RISE) == (b16 > MIN_RISE)
            out.append(f"bf16 {label}: whole-set rise {b16:.3g} against fp32's {f32:.3g}: "
                       + ("the same outcome." if same else "a different outcome."))
        if f32 is not None and (clipped, "float16") in rows:
            r = rows[clipped, "float16"]
            arrival = runs[clipped, "float16"].config["data"]["arrive_step"]
            skipped = [int(x) for x in str(r["at steps"]).split(", ") if x.isdigit()]
            line = (f"fp16 {label}: {r['steps skipped (overflow)']} steps dropped as overflows"
                    f" ({r['at steps']}); whole-set rise "
                    f"{'n/a' if f16 is None else format(f16, '.3g')} against fp32's {f32:.3g}")
            if f16 is not None:
                same = (f16 > MIN_RISE) == (f32 > MIN_RISE)
                line += ": the same outcome" if same else ": a different outcome"
            if arrival in skipped:
                line += "; the arrival's own batch was one of the dropped steps"
            out.append(line + ".")
    diverged = [r["run"] for r in rows.values() if r["status"] == "diverged"]
    out.append("Diverged: " + (", ".join(diverged) if diverged else "none") + ".")
    return out


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    runs = {_key(r): r for r in RUNS.load(folder, NAME)}
    rows = {}
    for clipped in (False, True):
        fp32 = runs.get((clipped, "float32"))
        for dtype in ("float32", "bfloat16", "float16"):
            if fp32 is not None and (clipped, dtype) in runs:
                rows[clipped, dtype] = measure(runs[clipped, dtype], fp32)
    text = publish(list(rows.values()), "Each low-precision run against the fp32 run with the "
                   "same clip; the forward pass only is in low precision (weights, gradients "
                   f"and Adam's moments stay fp32). {machine()}", "numerics", page)
    read = "\n".join(f"- {line}" for line in reading(runs, rows)) + "\n"
    if page:
        update_page(page, "numerics-reading", read)
    print(read)
    return {"blocks": {"numerics": text, "numerics-reading": read},
            "measured": list(rows.values())}
