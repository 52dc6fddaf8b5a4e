"""The whole-set evaluation: the length-sorted chunks give the plain mean loss, and the
evaluator's schedule (regular, last step, dense window after a norm jump, its stride)."""

from types import SimpleNamespace

import torch

from conftest import ROOT
from minitrain.core import config, datasets, zoo
from minitrain.core.data import IGNORE
from minitrain.core.evaluate import WholeSetLoss, length_chunks, mean_loss
from minitrain.core.model import token_losses


def test_length_chunks_give_the_mean_loss_of_the_padded_set():
    cfg = config.load(ROOT / "experiments/19-control/config.yaml", ["model.n_layer=1"])
    ds = datasets.build(cfg)
    model = zoo.build(cfg.model, ds.n_in, ds.n_out)
    x, y = ds.full.x, ds.full.y
    with torch.no_grad():
        tl = token_losses(model(x), y, IGNORE)
    plain = float(tl.sum()) / int((y != IGNORE).sum())
    chunks = length_chunks(x, y, chunk=64)
    assert sum(len(cx) for cx, _ in chunks) == len(x)
    assert max(cx.shape[1] for cx, _ in chunks) == x.shape[1] > min(cx.shape[1] for cx, _ in chunks)
    assert abs(mean_loss(model, chunks) - plain) < 1e-6 * plain
    rows = torch.randn(10, 3)  # tabular features: no token positions to cut
    assert [cx.shape for cx, _ in length_chunks(rows, torch.zeros(10), chunk=4)] == \
        [(4, 3), (4, 3), (2, 3)]


def _evaluated_steps(dense_every: int, jump_at=120, dense_at=None) -> list[int]:
    ev = WholeSetLoss(lambda x: torch.zeros(*x.shape, 2), {"train_loss": SimpleNamespace(
        x=torch.zeros(1, 1, dtype=torch.long), y=torch.zeros(1, 1, dtype=torch.long))},
        total_steps=200, every=50, warmup=10, dense=20, dense_every=dense_every,
        dense_at=dense_at)
    seen = []
    for step in range(200):
        if ev.due(step, 10.0 if step == jump_at else 1.0):
            seen.append(step)
    return seen


def test_dense_window_follows_a_norm_jump_at_its_stride():
    assert _evaluated_steps(1) == [0, 50, 100, *range(120, 141), 150, 199]
    assert _evaluated_steps(5) == [0, 50, 100, 120, 125, 130, 135, 140, 150, 199]


def test_an_arrival_opens_the_dense_window_spike_or_not():
    """Arms compared at an arrival are evaluated on the same steps there, whether or not
    their norm jumps; with a jump at the arrival nothing changes."""
    assert _evaluated_steps(1, jump_at=None, dense_at=120) == _evaluated_steps(1)
    assert _evaluated_steps(1, dense_at=120) == _evaluated_steps(1)
    assert _evaluated_steps(1, jump_at=None) == [0, 50, 100, 150, 199]


def test_a_large_set_is_evaluated_on_a_fixed_seeded_subset(tmp_path):
    """Above train.eval_max_rows sentences the whole-set loss is a fixed, seeded subset's, the
    summary says so, and the logged loss is that subset's mean token loss."""
    from minitrain.core import config, datasets, zoo
    from minitrain.core.evaluate import bounded, length_chunks, mean_loss
    from minitrain.core.rundir import load_run
    from minitrain.core.train import train

    over = ["train.steps=1", "model.n_layer=1", "model.n_embd=16", "model.n_head=2",
            "data.sampler=random", "train.eval_max_rows=50",
            "optimizer.lr=1e-30"]  # a step below every weight's last bit
    cfg = config.load("experiments/19-control/config.yaml", over)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["whole_set_subset"] == {"train_loss": {"rows": 50, "of": 240, "seed": 42}}
    ds = datasets.build(cfg)
    sets, _ = bounded({"train_loss": ds.full}, 50, 42)
    again, _ = bounded({"train_loss": ds.full}, 50, 42)
    assert sets["train_loss"].sentence_ids == again["train_loss"].sentence_ids  # fixed
    assert len(set(sets["train_loss"].sentence_ids)) == 50
    import torch
    torch.manual_seed(42)  # the model as train() initialised it, before its step
    model = zoo.build(cfg.model, ds.n_in, ds.n_out)
    b = sets["train_loss"]
    expected = mean_loss(model, length_chunks(b.x, b.y))
    logged = load_run(tmp_path / "run").metrics[0]["train_loss"]
    assert logged == expected  # the subset's mean, bit for bit (the weights as built)
    assert logged != mean_loss(model, length_chunks(ds.full.x, ds.full.y))


def test_the_training_sets_loss_is_split_into_its_rare_and_common_sentences(tmp_path):
    """Runs with tracked words log the training set's loss over the tracked sentences and over
    the others, from the same forward pass: each is that part's own mean token loss, and the
    two weighted by their tokens give train_loss."""
    import pytest

    from minitrain.core.rundir import load_run
    from minitrain.core.train import train

    over = ["train.steps=1", "model.n_layer=1", "model.n_embd=16", "model.n_head=2",
            "optimizer.lr=1e-30"]  # a step below every weight's last bit: the model as built
    cfg = config.load("experiments/19-control/config.yaml", over)
    train(cfg, tmp_path / "run", progress=False)
    m = load_run(tmp_path / "run").metrics[0]
    ds = datasets.build(cfg)
    torch.manual_seed(42)
    model = zoo.build(cfg.model, ds.n_in, ds.n_out)
    rare = torch.tensor([i in ds.tracked["written"] for i in range(ds.n)])
    assert int(rare.sum()) == 5
    parts = {}
    for name, rows in (("rare", rare), ("common", ~rare)):
        x, y = ds.full.x[rows], ds.full.y[rows]
        parts[name] = (mean_loss(model, length_chunks(x, y)), int((y != IGNORE).sum()))
        assert m[f"train_loss_{name}"] == pytest.approx(parts[name][0], rel=1e-5)
    (r, nr), (c, nc) = parts["rare"], parts["common"]
    assert m["train_loss"] == pytest.approx((r * nr + c * nc) / (nr + nc), rel=1e-6)
