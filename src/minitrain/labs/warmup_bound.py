"""The warm-up lab's report: the largest move of any one weight per step, against the bound
`optim.update_bound` gives for that step's learning rate, with and without warm-up and clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.config import OptimizerConfig
from minitrain.core.optim import update_bound
from minitrain.core.rundir import Run
from minitrain.labs.common import Runs, clip_label, publish

NAME, FOLDER, BLOCKS = "warmup-bound", "warmup-bound", ("warmup-bound",)
# the first steps of Run B's setup: the arrival never comes
RUNS = Runs("corpus", "gpt", differ=("optimizer.name",), arrival=False)


def label(run: Run) -> str:
    o = run.config["optimizer"]
    return f"{o.get('name', 'adamw')}, warm-up {o['warmup_steps']}, {clip_label(run)}"


def bounds(run: Run) -> np.ndarray:
    """The per-coordinate bound at each logged step (update t = number of updates so far)."""
    o = OptimizerConfig(**run.config["optimizer"])
    lr, skipped = run.column("lr"), np.array([bool(m.get("skipped")) for m in run.metrics])
    t = np.cumsum(~skipped)
    return np.array([update_bound(o, int(k), float(a)) for k, a in zip(t, lr)])


def measure(run: Run) -> dict:
    big, b = run.column("update_max"), bounds(run)
    ratio = big / b
    first = big[:10]
    return {"run": label(run),
            "largest move, steps 0-9": float(first.max()),
            "at step": int(first.argmax()),
            "bound there": float(b[int(first.argmax())]),
            "largest move, steps 10+": float(big[10:].max()),
            "largest move / bound (all steps)": float(np.max(ratio)) if np.isfinite(b).all()
            else np.nan,
            "bound at step 0": float(b[0]), "bound at the last step": float(b[-1]),
            "status": run.summary["status"]}


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    runs = sorted(RUNS.load(folder, NAME), key=label)
    rows = [measure(r) for r in runs]
    text = publish(rows, "Moves and bounds in weight units (`update_max` in `metrics.jsonl`; "
                   "`optim.update_bound`; n/a: no bound without a clip).", "warmup-bound", page)
    _picture(runs, Path(folder) / "warmup-bound.png")
    return {"blocks": {"warmup-bound": text}, "measured": rows}


def _picture(runs: list[Run], png: Path) -> None:
    from minitrain.labs.pictures import _save, plt

    names = sorted({r.config["optimizer"].get("name", "adamw") for r in runs})
    fig, ax = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.5), squeeze=False)
    for a, name in zip(ax[0], names):
        for i, run in enumerate(r for r in runs if r.config["optimizer"].get("name") == name):
            c = f"C{i}"
            a.plot(run.column("update_max"), color=c, lw=1, label=label(run))
            b = bounds(run)
            if np.isfinite(b).all():
                a.plot(b, color=c, lw=1, ls="--")
        a.set_yscale("log")
        a.set_title(f"{name}: largest weight move per step (dashed: its bound)")
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    _save(fig, png)
