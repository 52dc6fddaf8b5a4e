"""The two optimizer labs on short real runs: no weight ever moves further in one step than
`update_bound` allows, and the SGD-vs-Adam report reads the arrival from the runs."""

import numpy as np
import pytest
import yaml

from conftest import ROOT
from minitrain.cli import main
from minitrain.core.rundir import load_run
from minitrain.labs import sgd_vs_adam, warmup_bound

BASE = str(ROOT / "experiments/19-break-no-clip/config.yaml")
SMALL = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.extra_logs=[]",
         "train.checkpoint_every=0"]


def _sweep(tmp_path, name, spec):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "out": str(tmp_path / name), "jobs": 1,
                                    **spec}), encoding="utf-8")
    assert main(["sweep", str(path)]) == 0
    return tmp_path / name


def test_no_step_exceeds_its_bound(tmp_path):
    runs = _sweep(tmp_path, "warm", {
        "set": [*SMALL, "train.steps=60", "optimizer.warmup_steps=10"],
        "cells": {"adamw": [], "sgd": ["optimizer.name=sgd", "optimizer.lr=0.1"]},
        "grid": {"optimizer.grad_clip": [None, 0.5]}})
    rows = {r["run"]: r for r in warmup_bound.report(runs)["measured"]}
    assert len(rows) == 4
    for name, r in rows.items():
        if name != "sgd, warm-up 10, no clip":
            assert r["largest move / bound (all steps)"] <= 1 + 1e-5, name
    # Adam's first step reaches its bound, lr_0, with or without the clip
    for clip in ("no clip", "clip 0.5"):
        first = load_run(runs / "adamw" / f"grad_clip={'null' if clip == 'no clip' else 0.5}")
        assert first.metrics[0]["update_max"] == pytest.approx(first.metrics[0]["lr"], rel=1e-5)
    assert np.isnan(rows["sgd, warm-up 10, no clip"]["largest move / bound (all steps)"])


def test_sgd_vs_adam_reads_the_arrival(tmp_path):
    runs = _sweep(tmp_path, "arrive", {
        "set": [*SMALL, "train.steps=130", "data.arrive_step=100", "optimizer.warmup_steps=10"],
        "cells": {"adamw": [], "sgd": ["optimizer.name=sgd", "optimizer.lr=0.1"]}})
    rows = sgd_vs_adam.report(runs, None)["measured"]
    assert [r["optimizer"] for r in rows] == ["adamw", "sgd"]
    for r in rows:
        run = load_run(runs / r["optimizer"])
        g = run.column("grad_norm_pre_clip")
        assert r["grad ratio"] == pytest.approx(g[100] / np.median(g[50:100]))
    assert (runs / "sgd-vs-adam.png").stat().st_size > 10_000
