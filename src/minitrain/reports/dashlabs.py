"""The dashboard's panels for the labs' extra logs, where a run has them: class accuracy
(classes.jsonl), the embedding's geometry (geometry.jsonl), per-layer gradients
(layers.jsonl) and the mixture's source weights (phases.jsonl)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from minitrain.core.rundir import CLASSES, GEOMETRY, LAYERS, PHASES, Run

DASHES = ("solid", "dot", "dash", "dashdot", "longdash")
LAYER_RECORDS = 5  # layers.jsonl records drawn: the first, the last and some between


def figures(runs: list[Run], colors, layout: dict) -> list[dict]:
    def fig(title, log=False, xtitle="step"):
        f = go.Figure(layout=layout)
        f.update_layout(title=dict(text=title, font=dict(size=14)))
        f.update_xaxes(title=xtitle)
        f.update_yaxes(type="log" if log else "linear")
        return f

    acc = fig("accuracy over the training set: all, and per class")
    geo = fig("embedding rows' L2 norm")
    rank = fig("embedding table: effective rank and participation ratio")
    layers = fig("per-layer gradient norm dL/dh (log)", log=True, xtitle="layer (input first)")
    phases = fig("source weights per phase (mixture)")
    for i, run in enumerate(runs):
        c = colors[i % len(colors)]

        def add(f, x, y, name, dash="solid", mode="lines", shape="linear", run=run, c=c):
            f.add_trace(go.Scatter(x=x, y=np.asarray(y, np.float32), mode=mode,
                                   name=f"{run.name} {name}", legendgroup=run.name,
                                   line=dict(color=c, dash=dash, width=1.2, shape=shape)))

        if recs := run.log(CLASSES):
            x = [r["step"] for r in recs]
            add(acc, x, [r["accuracy"] for r in recs], "accuracy", mode="lines+markers")
            for j, name in enumerate(recs[0]["class_accuracy"]):
                y = [np.nan if r["class_accuracy"].get(name) is None else
                     r["class_accuracy"][name] for r in recs]
                add(acc, x, y, f"class {name}", dash=DASHES[(j + 1) % len(DASHES)])
        if recs := run.log(GEOMETRY):
            x = [r["step"] for r in recs]
            for j, name in enumerate(recs[0].get("norm", {})):
                add(geo, x, [r["norm"][name] for r in recs], f"row {name}",
                    dash=DASHES[j % len(DASHES)])
            add(rank, x, [r["effective_rank"] for r in recs], "effective rank")
            add(rank, x, [r["participation_ratio"] for r in recs], "participation ratio",
                dash="dot")
        if recs := run.log(LAYERS):
            pick = sorted(set(np.linspace(0, len(recs) - 1, LAYER_RECORDS).round().astype(int)))
            for j, k in enumerate(pick):
                y = recs[k]["act_grad_norm"]
                add(layers, list(range(len(y))), y, f"after {recs[k]['updates']} updates",
                    dash=DASHES[j % len(DASHES)], mode="lines+markers")
        if recs := run.log(PHASES):
            x = [r["step"] for r in recs] + [len(run.metrics) - 1]  # the last phase to the end
            for j, name in enumerate(recs[0]["weights"]):
                y = [r["weights"].get(name, 0) for r in recs]
                add(phases, x, y + y[-1:], f"source {name}",
                    dash=DASHES[j % len(DASHES)], shape="hv")
    out = [("fig-classes", acc, True), ("fig-geometry", geo, True), ("fig-rank", rank, True),
           ("fig-layers", layers, False), ("fig-phases", phases, True)]
    return [{"id": k, "time": t, "lab": True, "fig": f} for k, f, t in out if f.data]
