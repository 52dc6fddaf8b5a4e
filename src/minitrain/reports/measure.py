"""The measurements reports share, read from run directories: norm ratios and the spike
step, the spike detector, the batch and its loss-carrying tokens, Adam's v around a step, and
the whole-set loss windows. compare, diagnose, the labs and the exercises all read these.

The spike step of a set of runs is found from the data, not configured: the step after
warm-up whose pre-clip gradient norm is the largest multiple of the median of the 50 steps
before it, in whichever run has the largest such multiple. A spike (detect) is a step whose
value is both `min_ratio` times the median of the `window` steps before it and `z` robust
standard deviations above it (median absolute deviation of the logs, as production trainers'
outlier detectors do); flagged steps closer than `merge` steps are one event, reported at its
largest ratio.
"""

from __future__ import annotations

import numpy as np

from minitrain.core.config import ConfigError, DiagnoseConfig
from minitrain.core.rundir import Run

WINDOW = 50  # steps in the baseline median
MIN_RISE = 0.1  # compare's and the sweep's tables: a whole-set rise up to this is "no rise"


def norm_ratios(run: Run, window: int = WINDOW) -> np.ndarray:
    """Pre-clip norm over the median of the `window` steps before; NaN during warm-up."""
    g = run.column("grad_norm_pre_clip")
    start = max(run.config["optimizer"]["warmup_steps"], 1)
    out = np.full(len(g), np.nan)
    for i in range(start, len(g)):
        base = np.nanmedian(g[max(0, i - window):i])
        out[i] = g[i] / base if base > 0 else np.nan
    return out


def spike_step(*runs: Run) -> int | None:
    """The step with the largest norm ratio in any of `runs`; None when none has a step past
    warm-up."""
    best = None
    for run in runs:
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


def _whole_back(whole: np.ndarray, step: int, before: float, rise: float,
                min_rise: float = 0.0) -> int | str | None:
    """Steps after `step` until the whole-set loss is back below before + 10% of the rise,
    counted from its worst point on; 'no rise' when it rose by `min_rise` or less (by default:
    when it never went up)."""
    if not np.isfinite(rise) or rise <= min_rise:
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


def whole_set_around(run: Run, step: int, min_rise: float = 0.0, key: str = "train_loss"
                     ) -> dict:
    """Whole-set loss before `step`, worst within 150 steps from it, the rise, and when back
    ('no rise' for a rise up to `min_rise`); of the metrics field `key` (train_loss_rare, say)
    when given."""
    whole = run.column(key)
    before = whole[:step][np.isfinite(whole[:step])]
    after = whole[step:step + 150]
    out = {"whole_before": before[-1] if len(before) else np.nan,
           "whole_worst_after": np.nanmax(after) if np.isfinite(after).any() else np.nan}
    out["whole_rise"] = out["whole_worst_after"] - out["whole_before"]
    out["whole back within 10% of rise, steps"] = _whole_back(whole, step, out["whole_before"],
                                                              out["whole_rise"], min_rise)
    return out


def summarise(run: Run, step: int) -> dict:
    """One run at `step`: norms, clip, batch and whole-set losses, its densest batch, and each
    tracked row's v jump and recovery (compare's table, the post-mortem's numbers). The
    whole-set recovery is counted only after a rise above MIN_RISE: a smaller one is 'no rise'
    (there is nothing to recover from, and its 10% line sits within the evaluation's noise)."""
    g, post = run.column("grad_norm_pre_clip"), run.column("grad_norm_post_clip")
    loss, whole = run.column("loss"), run.column("train_loss")
    n = len(g)
    s = {"status": run.summary.get("status"), "steps": n}
    if step >= n:
        return s
    base = np.nanmedian(g[max(0, step - WINDOW):step]) if step else np.nan
    around = whole_set_around(run, step, MIN_RISE)
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
    for part in ("common", "rare"):  # the rise split: forgetting the rest vs the new sentences
        if np.isfinite(run.column(f"train_loss_{part}")).any():
            s[f"whole_rise, {part} sentences"] = \
                whole_set_around(run, step, key=f"train_loss_{part}")["whole_rise"]
    s.update(densest_batch(run))
    for piece, table in run.tracked_rows():
        before, at = v_around(run, piece, table, step)
        # a row with no gradient before (an input piece never seen) jumps from exactly 0
        s[f"v jump x [{piece} {table}]"] = "from 0" if before == 0 else at / before
        s[f"v back within 2x, steps [{piece} {table}]"] = v_recovery(run, piece, step, table)
    return s


def thresholds(run: Run, **overrides) -> DiagnoseConfig:
    """The run config's `diagnose` section (defaults for older runs), with the overrides that
    are not None; raises ConfigError for an impossible value."""
    th = DiagnoseConfig(**run.config.get("diagnose", {}))
    for key, value in overrides.items():
        if value is not None:
            setattr(th, key, value)
    th.check(lambda key, what: ConfigError(f"{key}: {what}"))
    return th


def detect(values: np.ndarray, start: int, th: DiagnoseConfig) -> list[dict]:
    """Spike events in `values` from step `start` on: step, ratio to the rolling median, z."""
    logs = np.log(np.where(values > 0, values, np.nan))
    flagged = []
    for i in range(start, len(values)):
        hist = logs[max(0, i - th.window):i]
        hist = hist[np.isfinite(hist)]
        if len(hist) < 10:
            continue
        if not np.isfinite(values[i]):
            flagged.append({"step": i, "ratio": np.inf, "z": np.inf})
            continue
        med = np.median(hist)
        mad = max(1.4826 * np.median(np.abs(hist - med)), 1e-6)
        ratio, z = float(np.exp(logs[i] - med)), float((logs[i] - med) / mad)
        if ratio >= th.min_ratio and z >= th.z:
            flagged.append({"step": i, "ratio": ratio, "z": z})
    events: list[dict] = []
    for f in flagged:
        if events and f["step"] - events[-1]["last"] <= th.merge:
            events[-1]["last"] = f["step"]
            if f["ratio"] > events[-1]["ratio"]:
                events[-1].update(step=f["step"], ratio=f["ratio"], z=f["z"])
        else:
            events.append({**f, "last": f["step"]})
    return events


def judged_from(run: Run, th: DiagnoseConfig) -> int:
    """The first step the detector judges: warm-up's end plus a quarter window."""
    return run.config["optimizer"]["warmup_steps"] + th.window // 4


def suggest_clip(run: Run, step: int | None = None, window: int = 100, q: float = 90.0
                 ) -> float | None:
    """A clip threshold from the run's own norms: the `q`th percentile of the pre-clip global
    norm over the `window` steps before `step` (default: the run's end), the rule of thumb of
    Google's tuning playbook. None when fewer than 10 finite norms are there."""
    norms = run.column("grad_norm_pre_clip")
    end = len(norms) if step is None else step
    recent = norms[max(0, end - window):end]
    recent = recent[np.isfinite(recent)]
    return float(np.percentile(recent, q)) if len(recent) >= 10 else None
