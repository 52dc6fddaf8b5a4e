"""`minitrain export RUN --tensorboard DIR`: a run directory's logs as TensorBoard events
(scalars per step, the per-token loss histogram per step). A reader of the run directory
like every report: training never writes these, so the run stays the single source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.config import ConfigError
from minitrain.core.rundir import RunDirError, load_run

# tag -> metrics.jsonl field; steps where the field is null (not evaluated) are left out
SCALARS = {
    "loss/batch": "loss", "loss/train_whole": "train_loss", "loss/val_whole": "val_loss",
    "grad_norm/pre_clip": "grad_norm_pre_clip", "grad_norm/post_clip": "grad_norm_post_clip",
    "clip_factor": "clip_factor", "lr": "lr", "update/norm": "update_norm",
    "update/max": "update_max", "weight_norm": "weight_norm",
}
HISTOGRAM = "token_loss"


def tensorboard(path: str | Path, out: str | Path) -> dict:
    """Write the run at `path` into a new event file in `out`; refuses a folder that already
    holds event files (TensorBoard would show both, step for step)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("export --tensorboard needs the tensorboard package: "
                          "pip install -e \".[tensorboard]\"") from None
    run, out = load_run(path), Path(out)
    if out.is_dir() and any(out.glob("events.out.tfevents.*")):
        raise RunDirError(f"{out}: already holds TensorBoard event files; export into an "
                          "empty folder")
    w = SummaryWriter(log_dir=str(out))
    series = 0
    for tag, key in SCALARS.items():
        rows = [(s, m[key]) for s, m in enumerate(run.metrics) if m.get(key) is not None]
        for step, value in rows:
            w.add_scalar(tag, value, step)
        series += bool(rows)
    for piece, table in run.tracked_rows():
        for key, what in (("v_mean", "adam_v"), ("m_norm", "adam_m")):
            rows = [(s, m["tracked"].get(piece, {}).get(table, {}).get(key))
                    for s, m in enumerate(run.moments)]
            rows = [(s, v) for s, v in rows if v is not None]
            for step, value in rows:
                w.add_scalar(f"{what}/{piece} {table}", value, step)
            series += bool(rows)
    tl = run.token_losses()
    tl = tl[np.isfinite(tl["loss"]) & (tl["step"] < len(run.metrics))]
    steps = np.unique(tl["step"])
    # records are written step after step: one split gives every step's losses
    bounds = np.searchsorted(tl["step"], steps, side="left") if len(tl) and \
        np.all(np.diff(tl["step"].astype(np.int64)) >= 0) else None
    for k, step in enumerate(steps):
        if bounds is not None:
            end = bounds[k + 1] if k + 1 < len(bounds) else len(tl)
            losses = tl["loss"][bounds[k]:end]
        else:
            losses = tl["loss"][tl["step"] == step]
        w.add_histogram(HISTOGRAM, losses.astype(np.float64), int(step))
    w.close()
    return {"dir": str(out), "scalars": series, "histograms": len(steps)}
