"""Lab 4 report: per-layer gradients of a deep MLP against depth, init gain and architecture
(plain, or residual + LayerNorm), and what training does with and without the clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.rundir import CLASSES, LAYERS, Run
from minitrain.labs.common import Runs, clip_label
from minitrain.reports.pages import table, update_page

NAME, FOLDER, BLOCKS = "depth-explosion", "depth-explosion", ("depth-init", "depth-training")
RUNS = Runs("tabular", "mlp", differ=("model.n_layer", "model.init_gain", "model.residual"))


def arch(run: Run) -> str:
    m = run.config["model"]
    return "res+LN" if m["residual"] and m["layer_norm"] else (
        "plain" if not (m["residual"] or m["layer_norm"]) else
        f"residual={m['residual']} LN={m['layer_norm']}")


def _vals(xs) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in xs], float)


def at_init(run: Run) -> dict:
    """From the probe before the first step: dL/dh at the first and last hidden layer, the
    backward gain per layer (geometric mean of |dL/dh_(l-1)| / |dL/dh_l|), dL/dW."""
    rec = run.log(LAYERS)[0]
    dh, dw = _vals(rec["act_grad_norm"]), _vals(rec["weight_grad_norm"])
    L = len(dh) - 1  # hidden layers after the input layer
    with np.errstate(all="ignore"):
        gain = (dh[0] / dh[-1]) ** (1 / L) if L else np.nan
    g0 = run.column("grad_norm_pre_clip")[0]
    return {"norm dL/dh, input side": dh[0], "norm dL/dh, output side": dh[-1],
            "backward gain per layer": gain,
            "norm dL/dW, first / last layer": dw[0] / dw[-1] if dw[-1] else np.nan,
            "output RMS": _vals(rec["act_rms"])[-1],
            "grad norm at step 0": g0 if np.isfinite(g0) else np.inf}


def training(run: Run) -> dict:
    g = run.column("grad_norm_pre_clip")
    whole = run.column("train_loss")
    cls = run.log(CLASSES)
    finite = whole[np.isfinite(whole)]
    last = run.log(LAYERS)[-1]
    dh = _vals(last["act_grad_norm"])
    return {"status": run.summary["status"],
            "dL/dh input / output side, last probe": dh[0] / dh[-1] if dh[-1] else np.nan,
            "final train loss": finite[-1] if len(finite) and
            run.summary["status"] == "completed" else np.nan,
            "final accuracy": cls[-1]["accuracy"] if cls else np.nan,
            "largest pre-clip norm": np.nanmax(g) if np.isfinite(g).all() else np.inf,
            "steps clipped": float(np.mean(run.column("clip_factor") < 1))}


def _key(run: Run):
    m = run.config["model"]
    return (arch(run) != "plain", m["init_gain"], m["n_layer"],
            run.config["optimizer"]["grad_clip"] is not None)


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    from minitrain.labs import pictures

    runs = sorted(RUNS.load(folder, NAME), key=_key)
    unclipped = [r for r in runs if r.config["optimizer"]["grad_clip"] is None]
    init_rows = []
    for r in unclipped:
        m, a = r.config["model"], at_init(r)
        init_rows.append([arch(r), m["init_gain"], m["n_layer"], *a.values()])
    text_init = table(["arch", "init gain", "depth", *at_init(unclipped[0]).keys()], init_rows)
    train_rows, pairs = [], {}
    for r in runs:
        pairs.setdefault(_key(r)[:3], {})[clip_label(r)] = (r, training(r))
    cols = list(training(runs[0]).keys())
    labels = sorted({lab for p in pairs.values() for lab in p}, key=lambda s: s != "no clip")
    for (_, gain, depth), p in pairs.items():
        r0 = next(iter(p.values()))[0]
        train_rows.append([arch(r0), gain, depth,
                           *(p[lab][1][c] if lab in p else None for lab in labels for c in cols)])
    text_train = table(["arch", "init gain", "depth", *(f"{c}, {lab}" for lab in labels
                                                         for c in cols)], train_rows)
    png = Path(folder) / "layers.png"
    pictures.depth_layers(runs, png)
    print(f"{text_init}\n\n{text_train}")
    blocks = {"depth-init": text_init, "depth-training": text_train}
    for key, text in blocks.items():
        if page:
            update_page(page, key, text)
    return {"blocks": blocks, "measured": {"png": str(png), "runs": len(runs)}}
