"""Lab 2 report: the tabular classifier with and without the clip, epoch by epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.rundir import CLASSES, Run
from minitrain.labs.common import Runs, clip_label
from minitrain.reports.pages import fmt, table, update_page

NAME, FOLDER = "tabular-classifier", "tabular-classifier"
BLOCKS = ("tabular-data", "tabular-epochs", "tabular-norms", "tabular-probs")
# one model with and without the clip: depth-explosion's runs differ in the model
RUNS = Runs("tabular", "mlp", same=("model.n_layer", "model.init_gain", "model.residual"))


def steps_per_epoch(run: Run) -> int:
    d = run.config["data"]
    return max(1, d["n_samples"] // d["batch_size"])


def epochs(run: Run) -> list[dict]:
    """Per epoch: mean batch loss over its steps, and at its last step the whole-set training
    and held-out loss and the training-set accuracy."""
    k, loss = steps_per_epoch(run), run.column("loss")
    whole, val = run.column("train_loss"), run.column("val_loss")
    acc = {c["step"]: c["accuracy"] for c in run.log(CLASSES)}
    out = []
    for e in range(len(loss) // k):
        last = (e + 1) * k - 1
        out.append({"epoch": e + 1, "batch loss (mean)": float(np.mean(loss[e * k:last + 1])),
                    "train loss": whole[last], "val loss": val[last],
                    "accuracy": acc.get(last, np.nan)})
    return out


def norms(run: Run) -> dict:
    g, f = run.column("grad_norm_pre_clip"), run.column("clip_factor")
    return {"largest pre-clip norm": np.nanmax(g), "median pre-clip norm": np.nanmedian(g),
            "steps clipped": float(np.mean(f < 1))}


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    from minitrain.labs import pictures

    runs = sorted(RUNS.load(folder, NAME),
                  key=lambda r: r.config["optimizer"]["grad_clip"] is None)  # clip first
    per_run = {clip_label(r): epochs(r) for r in runs}
    labels = list(per_run)
    cols = ["batch loss (mean)", "train loss", "val loss", "accuracy"]
    header = ["epoch", *(f"{c}, {lab}" for lab in labels for c in cols)]
    n = min(len(v) for v in per_run.values())
    rows = [[e + 1, *(per_run[lab][e][c] for lab in labels for c in cols)] for e in range(n)]
    text_epochs = table(header, rows)
    text_norms = table(["", *labels], [[k, *(norms(r)[k] for r in runs)]
                                        for k in norms(runs[0])])
    prob_rows = []
    for run in runs:
        last = run.log(CLASSES)[-1]
        names = run.summary["vocab"]
        for i, (p, y) in enumerate(zip(last["probs"], last["targets"])):
            prob_rows.append([clip_label(run), i, names[y], *(f"{q:.4f}" for q in p),
                              names[int(np.argmax(p))]])
    names = runs[0].summary["vocab"]
    text_probs = table(["run", "row", "true class", *(f"P({c})" for c in names), "predicted"],
                       prob_rows)
    png = Path(folder) / "curves.png"
    pictures.tabular_curves(runs, per_run, png)
    stats = runs[0].summary
    text_data = table(["", "value"], [
        ["training rows", runs[0].config["data"]["n_samples"]],
        ["held-out rows", runs[0].config["data"]["n_val"]],
        ["rows per class", " / ".join(str(c) for c in stats.get("class_counts", []))],
        ["raw column means, smallest .. largest",
         f"{fmt(min(stats['raw_mean']))} .. {fmt(max(stats['raw_mean']))}"],
        ["raw column stds, smallest .. largest",
         f"{fmt(min(stats['raw_std']))} .. {fmt(max(stats['raw_std']))}"],
        ["after standardising: mean, std", f"{fmt(stats['feature_mean_after'])}, "
                                           f"{fmt(stats['feature_std_after'])}"]])
    blocks = {"tabular-data": text_data, "tabular-epochs": text_epochs,
              "tabular-norms": text_norms, "tabular-probs": text_probs}
    for key, text in blocks.items():
        print(f"{key}\n{text}\n")
        if page:
            update_page(page, key, text)
    return {"blocks": blocks, "measured": {"epochs": per_run, "png": str(png)}}
