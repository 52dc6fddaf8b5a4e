"""What a phase boundary does to a mixture run, read from its run directory: the bump of the
batch loss and of the gradient norm right after each boundary, against the same ratio at
ordinary steps, the steps until the loss is back, and which boundaries `diagnose` flags.
Shared by the source-shifts and capacity labs."""

from __future__ import annotations

import numpy as np

from minitrain.core.rundir import PHASES, Run
from minitrain.reports.diagnose import diagnose

BEFORE = 10  # baseline: median of the steps before a boundary
AFTER = 3  # a bump: the largest value over the boundary step and the next AFTER - 1
BACK = 1.1  # recovered: a 3-step mean loss within 10% of the baseline
NEAR = 3  # a diagnose event within this many steps after a boundary is that boundary's
LOOSE = {"min_ratio": 1.5, "z": 3.0}  # a lowered detector, to see what a lower bar catches


def shifts(run: Run) -> bool:
    """False for a placebo run: equal weights in every phase (lead_share = 1/K)."""
    d = run.config["data"]
    return abs(d["lead_share"] * len(d["sources"]) - 1) > 1e-6


def boundaries(run: Run) -> list[int]:
    """Steps where a phase with another lead than the last one starts, past warm-up and with
    BEFORE steps of baseline; and within the steps the run has. With equal weights
    (lead_share = 1/K) the lead changes but the data does not: a placebo boundary."""
    phases = run.log(PHASES)
    first = run.config["optimizer"]["warmup_steps"] + BEFORE
    return [p["step"] for prev, p in zip(phases, phases[1:])
            if p["lead"] != prev["lead"] and first <= p["step"] < len(run.metrics)]


def bump(x: np.ndarray, s: int) -> float:
    """Largest value over steps s..s+AFTER-1 over the median of the BEFORE steps before s."""
    base = np.median(x[s - BEFORE:s])
    after = x[s:s + AFTER]
    if not np.isfinite(after).all():
        return np.inf
    return float(after.max() / base) if base > 0 else np.nan


def recovery(loss: np.ndarray, s: int, end: int) -> int | None:
    """Steps after s until the mean batch loss of 3 steps is within BACK x the baseline;
    None when it is not back before `end` (the next boundary or the end of the run)."""
    base = np.median(loss[s - BEFORE:s])
    for k in range(0, end - s - 2):
        if np.mean(loss[s + k:s + k + 3]) <= BACK * base:
            return k
    return None


def ordinary_steps(run: Run, marks: list[int]) -> np.ndarray:
    """Steps judged like a boundary but at least NEAR + AFTER steps from every phase start."""
    starts = np.array([p["step"] for p in run.log(PHASES)])
    first = run.config["optimizer"]["warmup_steps"] + BEFORE
    steps = np.arange(first, len(run.metrics) - AFTER)
    far = np.array([np.abs(starts - s).min() > NEAR + AFTER for s in steps], bool)
    return steps[far]


def flagged(run: Run, marks: list[int], **thresholds) -> dict:
    """diagnose's events: how many boundaries have one within NEAR steps, how many events
    are elsewhere."""
    spikes = [s["step"] for s in diagnose(run.path, **thresholds)["spikes"]]
    hit = [b for b in marks if any(b <= s <= b + NEAR for s in spikes)]
    other = [s for s in spikes if not any(b <= s <= b + NEAR for b in marks)]
    return {"boundaries flagged": len(hit), "events elsewhere": len(other), "steps": spikes}


def measure(run: Run) -> dict:
    loss, norm = run.column("loss"), run.column("grad_norm_pre_clip")
    marks = boundaries(run)
    ends = [*marks[1:], len(loss)]
    lb = np.array([bump(loss, s) for s in marks])
    nb = np.array([bump(norm, s) for s in marks])
    rec = [recovery(loss, s, e) for s, e in zip(marks, ends)]
    ordinary = ordinary_steps(run, marks)
    lo = np.array([bump(loss, s) for s in ordinary])
    no = np.array([bump(norm, s) for s in ordinary])
    p90_loss = np.nanpercentile(lo, 90) if len(lo) else np.nan
    at = flagged(run, marks)
    loose = flagged(run, marks, **LOOSE)
    finite = [r for r in rec if r is not None]
    whole = run.column("train_loss")
    before = whole[:marks[0]] if marks else whole[:0]
    before = before[np.isfinite(before)]
    whole = whole[np.isfinite(whole)]
    return {
        "status": run.summary["status"], "n_params": run.summary["n_params"],
        "boundaries": len(marks),
        "loss bump at boundaries (median)": np.median(lb) if len(lb) else np.nan,
        "loss bump at boundaries (max)": np.max(lb) if len(lb) else np.nan,
        "loss bump at ordinary steps (median)": np.median(lo) if len(lo) else np.nan,
        "loss bump at ordinary steps (90th pct)": p90_loss,
        "boundaries above the ordinary 90th pct": int(np.sum(lb > p90_loss)),
        "norm bump at boundaries (median)": np.median(nb) if len(nb) else np.nan,
        "norm bump at boundaries (max)": np.max(nb) if len(nb) else np.nan,
        "norm bump at ordinary steps (median)": np.median(no) if len(no) else np.nan,
        "norm bump at ordinary steps (90th pct)": np.nanpercentile(no, 90) if len(no)
        else np.nan,
        "recovery steps (median)": np.median(finite) if finite else np.nan,
        "not back before the next boundary": sum(r is None for r in rec),
        "pre-clip norm (median)": float(np.nanmedian(norm)),
        "steps clipped": float(np.mean(run.column("clip_factor") < 1)),
        "diagnose: boundaries flagged": at["boundaries flagged"],
        "diagnose: events elsewhere": at["events elsewhere"],
        "loose detector: boundaries flagged": loose["boundaries flagged"],
        "loose detector: events elsewhere": loose["events elsewhere"],
        "whole-set train loss before the first boundary": before[-1] if len(before)
        else np.nan,
        "final whole-set train loss": whole[-1] if len(whole) else np.nan,
        "final val loss": run.summary.get("final_val_loss"),
        "_marks": marks, "_flagged": at["steps"],
    }
