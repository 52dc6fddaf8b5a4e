"""`minitrain export RUN --tensorboard DIR`, read back with TensorBoard's own event reader:
every scalar and every step's per-token loss histogram is the run directory's."""

import sys

import numpy as np
import pytest

from conftest import ROOT
from minitrain.cli import main
from minitrain.core import config
from minitrain.core.rundir import load_run
from minitrain.core.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "toy"
    cfg = config.load(ROOT / "experiments/toy-rare-samples/config.yaml",
                      ["train.steps=60", "data.n_samples=60", "data.rare_fraction=0.1",
                       "train.eval_every=7"])
    train(cfg, out, progress=False)
    return load_run(out)


def test_the_events_read_back_as_the_run_logged_them(run, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(["export", str(run.path), "--tensorboard", str(out)]) == 0
    assert f"tensorboard: {out}" in capsys.readouterr().out
    ea = EventAccumulator(str(out), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag, key in (("loss/batch", "loss"), ("loss/train_whole", "train_loss"),
                     ("grad_norm/pre_clip", "grad_norm_pre_clip"), ("clip_factor", "clip_factor"),
                     ("lr", "lr"), ("update/norm", "update_norm")):
        got = ea.Scalars(tag)
        want = [(s, m[key]) for s, m in enumerate(run.metrics) if m[key] is not None]
        assert [e.step for e in got] == [s for s, _ in want], tag
        np.testing.assert_allclose([e.value for e in got], [v for _, v in want], rtol=1e-6)
    assert len(ea.Scalars("loss/train_whole")) < len(run.metrics)  # only evaluated steps
    v = ea.Scalars("adam_v/B wte")
    assert [e.value for e in v] == pytest.approx(run.v_trace("B", "wte").tolist(), rel=1e-6)
    assert "adam_m/B head" in tags["scalars"]
    hist = ea.Histograms("token_loss")
    assert [h.step for h in hist] == list(range(len(run.metrics)))
    for h in hist[::9]:
        losses = run.token_losses(h.step)["loss"].astype(float)
        hv = h.histogram_value
        assert hv.num == len(losses) and sum(hv.bucket) == len(losses)
        assert hv.max == pytest.approx(losses.max()) and hv.min == pytest.approx(losses.min())
        assert hv.sum == pytest.approx(losses.sum(), rel=1e-6)


def test_export_refuses_in_one_line(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tb"
    out.mkdir()
    (out / "events.out.tfevents.1.host").write_bytes(b"")
    assert main(["export", str(run.path), "--tensorboard", str(out)]) == 2
    assert main(["export", str(tmp_path / "no-run"), "--tensorboard", str(tmp_path / "x")]) == 2
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    assert main(["export", str(run.path), "--tensorboard", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "empty folder" in err[0] and "[tensorboard]" in err[2], err
