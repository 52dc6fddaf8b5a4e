"""The clip-geometry lab on a small run: the restored model meets the same rare batch the
run met, and the three clips behave as their definitions say on those real gradients."""

import numpy as np
import pytest

from conftest import ROOT
from minitrain.core import config
from minitrain.core.rundir import load_run
from minitrain.core.train import train
from minitrain.labs import clip_geometry

SMALL = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "optimizer.warmup_steps=5",
         "data.arrive_step=60", "train.checkpoint_every=60", "train.eval_every=20"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("geometry")
    base = ROOT / "experiments/clip-geometry/config.yaml"
    train(config.load(base, [*SMALL, "train.steps=60"]), tmp / "stop", progress=False)
    train(config.load(base, [*SMALL, "train.steps=61"]), tmp / "on", progress=False)
    return clip_geometry.measure(tmp / "stop", budget=0.5), load_run(tmp / "on")


def test_the_restored_model_meets_the_runs_own_rare_batch(measured):
    m, on = measured
    rare = m["batches"]["rare batch", "budget"][0]
    assert m["rare_ids"] == on.batches[60]["sentence_ids"]
    assert on.batches[60]["words"]["written"] == 5
    assert rare["norm"] == pytest.approx(on.metrics[60]["grad_norm_pre_clip"], rel=1e-6)


def test_each_clip_mode_on_real_gradients(measured):
    m, _ = measured
    for rows in m["batches"].values():
        for r in rows:
            if r["target"] >= r["norm"]:
                continue  # nothing to clip
            for mode in clip_geometry.MODES:
                assert r[mode]["post_norm"] == pytest.approx(r["target"], rel=1e-5)
            assert r["global"]["cosine"] == pytest.approx(1.0, abs=1e-5)  # float32 sums
            assert r["value"]["cosine"] < r["global"]["cosine"] - 0.01
            assert np.allclose(r["global"]["share"], r["share_raw"], atol=1e-6)
            # per-tensor: every tensor it clipped ends with the same share
            capped = r["per-tensor"]["share"][r["share_raw"] * r["norm"] ** 2 >
                                               r["per-tensor"]["threshold"] ** 2]
            assert len(capped) >= 2 and np.ptp(capped) < 1e-6
    text = clip_geometry.tables(m)
    assert "| rare batch |" in text and "none acts" not in text.split("rare batch")[1][:80]
