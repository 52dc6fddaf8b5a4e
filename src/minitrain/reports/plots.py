"""Pictures drawn from run directories (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from minitrain.core.rundir import Run


def compare_panels(a: Run, b: Run, step: int | None, png: Path) -> None:
    fig, ax = plt.subplots(3, 2, figsize=(13, 11))
    colors = {a.name: "tab:blue", b.name: "tab:red"}
    for run in (a, b):
        c, x = colors[run.name], np.arange(len(run.metrics))
        ax[0, 0].plot(x, run.column("loss"), color=c, alpha=0.35, lw=0.8, label=f"{run.name} batch")
        whole = run.column("train_loss")
        ok = np.isfinite(whole)
        ax[0, 0].plot(x[ok], whole[ok], color=c, lw=1.8, label=f"{run.name} whole train set")
        ax[0, 1].semilogy(x, run.column("grad_norm_pre_clip"), color=c, lw=1.0,
                          label=f"{run.name} pre-clip")
        ax[0, 1].semilogy(x, run.column("grad_norm_post_clip"), color=c, lw=1.0, ls=":",
                          label=f"{run.name} post-clip")
        ax[2, 1].plot(x, run.column("lr"), color=c, label=run.name)
        for (piece, table), ls in zip(run.tracked_rows(), ("-", "--", ":", "-.")):
            v = run.v_trace(piece, table)
            ax[2, 0].semilogy(np.arange(len(v)), v, color=c, ls=ls,
                              label=f"{run.name} v[{piece} {table}]")
        if step is not None and step < len(run.metrics):
            tl = run.token_losses(step)["loss"]
            ax[1, 0 if run is a else 1].hist(tl, bins=40, color=c)
            ax[1, 0 if run is a else 1].set_title(f"per-token loss at step {step}, {run.name}")
            ax[1, 0 if run is a else 1].set_xlabel("loss (nats)")
    ax[0, 0].set_title("loss")
    ax[0, 1].set_title("gradient norm (log)")
    ax[2, 0].set_title("Adam v, mean over each tracked piece's row (wte: input, head: output; log)")
    ax[2, 1].set_title("learning rate")
    for axis in (ax[0, 0], ax[0, 1], ax[2, 0], ax[2, 1]):
        if step is not None:
            axis.axvline(step, color="gray", ls="--", lw=0.8)
        axis.set_xlabel("step")
        if axis.get_legend_handles_labels()[0]:  # a tabular run has no tracked rows to plot
            axis.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
