"""The signs of one run that say what went wrong, read from its logs only (never from its
config, so a run whose config was swapped or removed reads the same): where the loss starts
against a uniform guess, where it ends against the corpus' floor, what the learning rate did,
how far the first step moved the weights, and the spikes diagnose found."""

from __future__ import annotations

import math

import numpy as np

from minitrain.core import rundir
from minitrain.core.rundir import Run
from minitrain.reports.text import memorisation_floor, training_sentences


def _first_below(x: np.ndarray, limit: float, after: int) -> int | None:
    """The first step from `after` on where `x` falls below `limit` and stays there."""
    below = x < limit
    for i in range(after, len(x)):
        if below[i:].all():
            return i
    return None


def symptoms(run: Run, spikes: list[dict]) -> dict:
    """Facts about `run` (numbers, None where a log is missing); `spikes` are diagnose's."""
    loss, lr, update = run.column("loss"), run.column("lr"), run.column("update_norm")
    whole = run.column("train_loss")
    evaluated = np.flatnonzero(np.isfinite(whole))
    vocab = run.summary.get("vocab_size") or len(run.summary.get("vocab") or []) or None
    text = not run.summary.get("vocab") and (run.path / rundir.TOKEN_LOSSES).is_file()
    sentences = training_sentences(run) if text else {}  # synthetic kinds name their vocab
    peak_step = int(np.nanargmax(lr)) if np.isfinite(lr).any() else 0
    peak = float(lr[peak_step]) if len(lr) else math.nan
    zero_from = _first_below(lr, 0.01 * peak, peak_step) if peak > 0 else None
    first = run.metrics[0] if run.metrics else {}
    rare = [s for s in spikes if "grad_norm" in s["kind"] and any((s["batch"]["words"] or
                                                                   {}).values())]
    return {
        "steps": len(run.metrics),
        "text": not run.summary.get("vocab"),  # a GPT on text: what the cause rules read
        "diverged": run.summary.get("status") == "diverged",
        "vocab": vocab,
        "ln_vocab": math.log(vocab) if vocab else None,
        "loss_0": float(loss[0]) if len(loss) else None,
        "floor": memorisation_floor(sentences) if sentences else None,
        "sentences_seen": len(sentences),
        "whole_first": float(whole[evaluated[0]]) if len(evaluated) else None,
        "whole_final": float(whole[evaluated[-1]]) if len(evaluated) else None,
        "whole_min": float(np.nanmin(whole)) if len(evaluated) else None,
        "whole_third": _at_or_before(whole, evaluated, 2 * len(whole) // 3),  # 2/3 through
        "val_final": _last(run.column("val_loss")),
        "lr_0": float(lr[0]) if len(lr) else None,
        "lr_peak": peak, "lr_peak_step": peak_step,
        "lr_zero_from": zero_from,  # lr under 1% of its peak from here to the end
        "update_max_0": first.get("update_max"),
        "update_norm_late": float(np.nanmedian(update[2 * len(update) // 3:]))
        if len(update) else None,  # the median over the run's last third
        "grad_norm_median": float(np.nanmedian(run.column("grad_norm_pre_clip"))),
        "clipped_share": float(np.nanmean(run.column("clip_factor") < 1)),
        "weight_norm_0": first.get("weight_norm"),
        "weight_norm_final": run.metrics[-1].get("weight_norm") if run.metrics else None,
        "rare_batch_spikes": [{"step": s["step"], "ratio": s["ratio"],
                               "clip_factor": s["clip_factor"], "words": s["batch"]["words"],
                               "rise": _rise(s)} for s in rare],
    }


def _at_or_before(x: np.ndarray, evaluated: np.ndarray, step: int) -> float | None:
    """`x` at the last evaluated step at or before `step`."""
    before = evaluated[evaluated <= step]
    return float(x[before[-1]]) if len(before) else None


def _last(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x[-1]) if len(x) else None


def _rise(spike: dict) -> float | None:
    w = spike["whole_loss"]
    if w["before"] is None or w["worst_after"] is None:
        return None
    return w["worst_after"] - w["before"]
