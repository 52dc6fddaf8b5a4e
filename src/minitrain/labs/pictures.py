"""The labs' pictures, drawn from run directories (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from minitrain.core.rundir import CLASSES, GEOMETRY, LAYERS, Run
from minitrain.labs.common import clip_label


def _save(fig, png: Path) -> None:
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)


def _mark(ax, rare: np.ndarray) -> None:
    for s in rare[:60]:  # beyond that the marks are a grey wall
        ax.axvline(s, color="tab:red", alpha=0.25, lw=0.6)


def _toy_rows(run: Run, rare: np.ndarray, ax, col: int | None = None) -> None:
    """The panel set of one toy run down one column of `ax` (6 rows)."""
    a = ax if col is None else ax[:, col]
    x = np.arange(len(run.metrics))
    geo, cls = run.log(GEOMETRY), run.log(CLASSES)
    a[0].plot(x, run.column("loss"), lw=0.5, alpha=0.5, label="batch")
    a[0].plot(x, run.column("train_loss"), lw=1.2, label="whole set")
    a[0].set_yscale("log")
    a[0].set_title(f"{run.name}: loss (log)")
    a[1].semilogy(x, run.column("grad_norm_pre_clip"), lw=0.6, label="pre-clip")
    a[1].semilogy(x, run.column("grad_norm_post_clip"), lw=0.6, ls=":", label="post-clip")
    a[1].set_title("gradient norm (log); red: rare-sample steps")
    a[2].plot(x, run.column("weight_norm"))
    a[2].set_title("weight norm (L2, all parameters)")
    a[3].plot(x, [g["participation_ratio"] for g in geo], label="participation ratio")
    a[3].plot(x, [g["effective_rank"] for g in geo], label="effective rank (entropy)")
    a[3].set_title("effective dimension of the embedding")
    for name in run.summary["vocab"]:
        a[4].plot([c["step"] for c in cls], [c["class_accuracy"][name] for c in cls],
                  lw=1, label=f"target {name}")
    a[4].set_title("accuracy per target class (whole set)")
    for pair in geo[0]["cosines"]:
        a[5].plot(x, [g["cosines"][pair] for g in geo], lw=0.8, label=pair)
    a[5].set_title("cosine between class embeddings")
    for axis in a:
        _mark(axis, rare)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6)
        axis.set_xlabel("step")


def toy_panels(run: Run, rare: np.ndarray, png: Path) -> None:
    fig, ax = plt.subplots(6, 1, figsize=(8, 16))
    _toy_rows(run, rare, ax)
    _save(fig, png)


def toy_side_by_side(runs: list[Run], rares: list[np.ndarray], png: Path) -> None:
    fig, ax = plt.subplots(6, len(runs), figsize=(7 * len(runs), 16), squeeze=False)
    for col, (run, rare) in enumerate(zip(runs, rares)):
        _toy_rows(run, rare, ax, col)
    _save(fig, png)


def toy_trajectories(runs: list[Run], rares: list[np.ndarray], png: Path) -> None:
    """Each class embedding's path in one 2-D PCA basis shared by the runs; rare steps dotted."""
    paths = [np.array([[g["rows"][n] for n in run.summary["vocab"]] for g in run.log(GEOMETRY)])
             for run in runs]  # (steps, classes, dim) per run
    flat = np.concatenate([p.reshape(-1, p.shape[-1]) for p in paths])
    mean = flat.mean(axis=0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    share = s[:2] ** 2 / (s ** 2).sum()
    fig, ax = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 6), squeeze=False)
    for a, run, p, rare in zip(ax[0], runs, paths, rares):
        xy = (p - mean) @ vt[:2].T  # (steps, classes, 2)
        for k, name in enumerate(run.summary["vocab"]):
            line, = a.plot(xy[:, k, 0], xy[:, k, 1], lw=0.8, label=name)
            a.plot(*xy[0, k], "o", color=line.get_color(), mfc="none")
            a.plot(*xy[-1, k], "s", color=line.get_color())
            a.plot(xy[rare, k, 0], xy[rare, k, 1], ".", color="tab:red", ms=3)
        a.set_title(f"{run.name} ({clip_label(run)})\no start, square end, red: rare steps")
        a.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
        a.set_ylabel(f"PC2 ({share[1]:.0%})")
        a.legend(fontsize=7)
    _save(fig, png)


def tabular_curves(runs: list[Run], per_epoch: dict[str, list[dict]], png: Path) -> None:
    """Loss and accuracy at each epoch's end (from tabular_classifier.epochs), norm per step."""
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    for run in runs:
        rows = per_epoch[clip_label(run)]
        e = [r["epoch"] for r in rows]
        ax[0].plot(e, [r["train loss"] for r in rows], marker="o", ms=3,
                   label=f"{clip_label(run)} train")
        ax[0].plot(e, [r["val loss"] for r in rows], ls="--", label=f"{clip_label(run)} val")
        ax[1].plot(e, [r["accuracy"] for r in rows], marker="o", ms=3, label=clip_label(run))
        ax[2].semilogy(run.column("grad_norm_pre_clip"), lw=0.7, label=f"{clip_label(run)} pre")
    ax[0].set_title("whole-set loss at the end of each epoch")
    ax[1].set_title("training-set accuracy at the end of each epoch")
    ax[2].set_title("pre-clip gradient norm per step (log)")
    for a, xlabel in zip(ax, ("epoch", "epoch", "step")):
        a.set_xlabel(xlabel)
        a.legend(fontsize=7)
    _save(fig, png)


def depth_layers(runs: list[Run], png: Path) -> None:
    """|dL/dh_l| per hidden layer at initialisation: one panel per depth, a line per variant."""
    depths = sorted({r.config["model"]["n_layer"] for r in runs})
    fig, ax = plt.subplots(2, len(depths), figsize=(5.5 * len(depths), 9), squeeze=False)
    for col, depth in enumerate(depths):
        for run in runs:
            m = run.config["model"]
            if m["n_layer"] != depth or run.config["optimizer"]["grad_clip"] is not None:
                continue  # at initialisation the clip has done nothing yet: one line each
            probe = run.log(LAYERS)
            init, last = probe[0], probe[-1]
            kind = "res+LN" if m["residual"] else "plain"
            ls = "-" if kind == "plain" else "--"
            layer = np.arange(len(init["act_grad_norm"]))
            for row, rec in ((0, init), (1, last)):
                y = np.array([np.nan if v is None else v for v in rec["act_grad_norm"]], float)
                ax[row, col].semilogy(layer, y, ls=ls, marker=".",
                                      label=f"{kind} gain {m['init_gain']:g}")
        ax[0, col].set_title(f"depth {depth}: |dL/dh_l| at initialisation")
        ax[1, col].set_title(f"depth {depth}: |dL/dh_l| at the last probe (no clip)")
        for row in (0, 1):
            ax[row, col].set_xlabel("layer l (0 = input layer, output side on the right)")
            ax[row, col].legend(fontsize=7)
    _save(fig, png)


SOURCE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")


def shift_panels(runs: list[Run], marks: list[list[int]], flagged: list[list[int]],
                 png: Path) -> None:
    """Per run (a row): batch loss and pre-clip norm per step, the background shaded by each
    phase's lead source, the boundaries as dashed lines, diagnose's events as triangles."""
    from minitrain.core.rundir import PHASES

    fig, ax = plt.subplots(len(runs), 2, figsize=(14, 3 * len(runs)), squeeze=False)
    for row, (run, mk, fl) in enumerate(zip(runs, marks, flagged)):
        phases = run.log(PHASES)
        names = list(phases[0]["weights"])
        x = np.arange(len(run.metrics))
        for col, key, title in ((0, "loss", "batch loss"),
                                (1, "grad_norm_pre_clip", "pre-clip gradient norm")):
            a, y = ax[row, col], run.column(key)
            a.semilogy(x, y, lw=0.7, color="black")
            for p in phases:
                a.axvspan(p["step"], p["step"] + p["length"], alpha=0.12, lw=0,
                          color=SOURCE_COLOURS[p["lead"] % len(SOURCE_COLOURS)])
            for s in mk:
                a.axvline(s, color="tab:red", ls="--", lw=0.6)
            fl = [s for s in fl if s < len(y)]
            a.plot(fl, y[fl], "v", color="tab:red", ms=7)
            clip = run.config["optimizer"]["grad_clip"]
            if col == 1 and clip is not None:
                a.axhline(clip, color="grey", lw=0.8, ls=":")
            a.set_xlim(0, len(x))
            a.set_title(f"{run.path.parent.name} {clip_label(run)}: {title}", fontsize=9)
            a.set_xlabel("step")
        handles = [plt.Rectangle((0, 0), 1, 1, color=SOURCE_COLOURS[i], alpha=0.3)
                   for i in range(len(names))]
        ax[row, 0].legend(handles, [f"lead: {n}" for n in names], fontsize=7)
    _save(fig, png)


def capacity_damage(rows: list[dict], png: Path) -> None:
    """Loss bump, norm bump and recovery at the boundaries, and the final loss, against
    parameter count: a line per learning rate and clip setting, a point per run."""
    keys = ("loss bump at boundaries (median)", "norm bump at boundaries (median)",
            "recovery steps (median)", "final whole-set train loss")
    fig, ax = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4))
    groups = list(dict.fromkeys((r["lr"], r["clip"]) for r in rows))
    for lr, clip in groups:
        rs = sorted((r for r in rows if (r["lr"], r["clip"]) == (lr, clip)),
                    key=lambda r: r["n_params"])
        marker = "os^D"[sorted({g[0] for g in groups}).index(lr) % 4]
        for a, key in zip(ax, keys):
            a.plot([r["n_params"] for r in rs], [r[key] for r in rs], marker + "-", alpha=0.7,
                   label=f"lr {lr:g}, {clip}")
    for a, key in zip(ax, keys):
        a.set_xscale("log")
        a.set_xlabel("parameters")
        a.set_title(key, fontsize=9)
        a.legend(fontsize=7)
    _save(fig, png)
