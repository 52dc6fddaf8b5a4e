"""The SGD lab's report: Run B's arrival met by SGD with momentum and by AdamW, each with and
without the clip. How far the weights move at the spike, against how far the gradient jumped."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.rundir import Run
from minitrain.labs.common import Runs, clip_label, publish
from minitrain.reports.measure import whole_set_around

NAME, FOLDER, BLOCKS = "sgd-vs-adam", "19-sgd", ("sgd-vs-adam",)
RUNS = Runs("corpus", "gpt", differ=("optimizer.name",), arrival=True)

WINDOW = 50  # ordinary steps before the arrival that set the baseline


def label(run: Run) -> str:
    o = run.config["optimizer"]
    return f"{o.get('name', 'adamw')} lr {o['lr']:g}, {clip_label(run)}"


def measure(run: Run) -> dict:
    s = run.config["data"]["arrive_step"]
    g, upd = run.column("grad_norm_pre_clip"), run.column("update_norm")
    post, big = run.column("grad_norm_post_clip"), run.column("update_max")
    base = slice(max(0, s - WINDOW), s)
    g0, u0, p0 = np.median(g[base]), np.median(upd[base]), np.median(post[base])
    around = whole_set_around(run, s)
    return {
        "run": label(run), "optimizer": run.config["optimizer"].get("name", "adamw"),
        "grad ratio": g[s] / g0, "post-clip ratio": post[s] / p0,
        "update ratio at the arrival": upd[s] / u0,
        "update ratio, next 20 steps (mean)": float(np.mean(upd[s + 1:s + 21])) / u0,
        "largest coordinate move at the arrival": big[s],
        "largest coordinate move before (max)": float(np.max(big[base])),
        "whole-set rise": around["whole_rise"], "whole-set before": around["whole_before"],
        "status": run.summary["status"],
    }


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    runs = sorted(RUNS.load(folder, NAME), key=label)
    rows = [measure(r) for r in runs]
    text = publish(rows, f"Ratios are to the median of the {WINDOW} steps before the arrival "
                   f"(step {runs[0].config['data']['arrive_step']}); moves are in weight units.",
                   "sgd-vs-adam", page, hide=("run", "optimizer"))
    _picture(runs, Path(folder) / "sgd-vs-adam.png")
    return {"blocks": {"sgd-vs-adam": text}, "measured": rows}


def _picture(runs: list[Run], png: Path) -> None:
    from minitrain.labs.pictures import _save, plt

    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    for run in runs:
        s = run.config["data"]["arrive_step"]
        x = np.arange(s - 60, min(len(run.metrics), s + 100))
        for a, key in zip(ax, ("grad_norm_pre_clip", "update_norm")):
            y = run.column(key)
            a.plot(x - s, y[x] / np.median(y[s - WINDOW:s]), label=label(run), lw=1)
    for a, what in zip(ax, ("pre-clip gradient norm", "update norm (weight change)")):
        a.set_yscale("log")
        a.axvline(0, color="0.5", ls=":")
        a.set_title(f"{what} / its median before the arrival")
        a.set_xlabel("steps from the arrival")
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    _save(fig, png)

