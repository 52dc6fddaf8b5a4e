"""The lab kinds: effective dimension against hand-computed cases, the synthetic data, the
model zoo, config errors, and short real runs whose files and pages a user reads."""

import math

import numpy as np
import pytest
import torch
import yaml

from minitrain.cli import main
from minitrain.core import config, datasets, synthetic, zoo
from minitrain.core.config import ConfigError, ModelConfig
from minitrain.core.probes import effective_rank, participation_ratio
from minitrain.core.rundir import CLASSES, GEOMETRY, LAYERS, load_run
from minitrain.reports.diagnose import diagnose

TOY = "experiments/toy-rare-samples/config.yaml"


def sweep(base, out, grid: dict, sets=()):
    """The labs' runs, as their recipes make them: a sweep spec with a grid, in one process."""
    spec = out.parent / f"{out.name}-sweep.yaml"
    spec.write_text(yaml.safe_dump({"base": base, "out": str(out), "jobs": 1, "set": list(sets),
                                    "grid": grid}), encoding="utf-8")
    assert main(["sweep", str(spec)]) == 0
TAB = "experiments/tabular-classifier/config.yaml"
DEPTH = "experiments/depth-explosion/config.yaml"


# ---- effective dimension ------------------------------------------------------------------

def test_effective_dimension_of_diagonal_matrices():
    s = torch.linalg.svdvals(torch.diag(torch.tensor([3.0, 4.0, 0.0])))
    assert participation_ratio(s) == pytest.approx((9 + 16) ** 2 / (81 + 256))
    p = np.array([4, 3]) / 7
    assert effective_rank(s) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    eye = torch.linalg.svdvals(torch.eye(4))
    assert participation_ratio(eye) == pytest.approx(4) and effective_rank(eye) == pytest.approx(4)
    rank1 = torch.linalg.svdvals(torch.outer(torch.ones(4), torch.arange(1.0, 9.0)))
    assert participation_ratio(rank1) == pytest.approx(1, abs=1e-6)
    assert effective_rank(rank1) == pytest.approx(1, abs=1e-5)
    zero = torch.zeros(3)
    assert participation_ratio(zero) == 0 and effective_rank(zero) == 0


# ---- data kinds ---------------------------------------------------------------------------

def test_toy_tokens_imbalance_and_seed():
    x, y = synthetic.toy_tokens(1000, 0.01, seed=42)
    holds_b = (x == 1) | (y == 1)
    assert int(holds_b.sum()) == 10 and len(x) == 1000
    assert all((a, b) in synthetic.TOY_PAIRS for a, b in zip(x.tolist(), y.tolist()))
    assert int(synthetic.toy_tokens(1000, 0.2, seed=42)[0].eq(1).sum()) == 100  # B -> C half
    x2, _ = synthetic.toy_tokens(1000, 0.01, seed=42)
    x3, _ = synthetic.toy_tokens(1000, 0.01, seed=7)
    assert torch.equal(x, x2) and not torch.equal(x, x3)


def test_tabular_is_standardised_and_seeded():
    x, y, xv, yv, stats = synthetic.tabular(1000, 200, 10, 3, seed=42)
    assert x.shape == (1000, 10) and xv.shape == (200, 10)
    torch.testing.assert_close(x.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(10), atol=1e-5, rtol=0)
    assert max(stats["raw_std"]) / min(stats["raw_std"]) > 2  # the raw columns differ in scale
    assert set(y.tolist()) == {0, 1, 2}
    assert torch.equal(y, synthetic.tabular(1000, 200, 10, 3, seed=42)[1])


def test_dataset_batches_are_single_examples():
    ds = datasets.build(config.load(TOY))
    b = ds.batch([0, 5])
    assert b.x.shape == (2, 1) and b.y.shape == (2, 1) and ds.n_out == 4
    assert ds.tracked["B"] == {i for i in range(ds.n)
                               if 1 in (int(ds.full.x[i, 0]), int(ds.full.y[i, 0]))}
    tab = datasets.build(config.load(TAB))
    assert tab.batch([1, 2, 3]).x.shape == (3, 10) and tab.n_out == 3 and tab.tokenizer is None


# ---- models -------------------------------------------------------------------------------

def test_zoo_shapes_and_tables():
    torch.manual_seed(0)
    el = zoo.build(ModelConfig(kind="embed-linear", n_embd=8), 4, 4)
    assert el(torch.tensor([[0], [3]])).shape == (2, 1, 4)
    assert set(zoo.vocab_tables(el)) == {"wte", "head"}
    ff = zoo.build(ModelConfig(kind="mlp", n_layer=3, n_embd=16), 10, 3)
    hidden = []
    assert ff(torch.randn(5, 10), hidden).shape == (5, 1, 3) and len(hidden) == 4
    assert zoo.vocab_tables(ff) == {}
    gpt = zoo.build(ModelConfig(), 64, 64)
    assert set(zoo.vocab_tables(gpt)) == {"wte"}  # tied head: one table


@pytest.mark.parametrize("gain", [0.5, 1.0, 2.0])
def test_init_gain_sets_the_backward_gain_per_layer(gain):
    torch.manual_seed(0)
    L = 8
    ff = zoo.build(ModelConfig(kind="mlp", n_layer=L, n_embd=256, init_gain=gain), 10, 3)
    hidden = []
    loss = ff(torch.randn(512, 10), hidden).logsumexp(-1).mean()
    dh = torch.autograd.grad(loss, hidden)
    measured = (dh[0].norm() / dh[-1].norm()) ** (1 / L)
    assert float(measured) == pytest.approx(gain, rel=0.15)


# ---- config errors ------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("model.kind=cnn", "model.kind"), ("data.kind=images", "data.kind"),
    ("data.rare_fraction=1.5", "data.rare_fraction"), ("model.init_gain=0", "model.init_gain"),
    ("data.kind=corpus", "model.kind"), ("data.n_classes=1", "data.n_classes"),
])
def test_bad_lab_configs_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"{TAB}: {key}: "):
        config.load(TAB, [override])


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", TOY, "--set", "model.kind=cnn", "--out", str(tmp_path)]) == 2
    (tmp_path / "s.yaml").write_text(f"base: {TOY}\ngrid: {{data.rare_fraction: []}}\n")
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2
    assert main(["report", "toy-rare-samples", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("minitrain: error: ") for line in err)


# ---- short real runs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    sweep(TOY, out / "runs", {"optimizer.grad_clip": [None, 1.0]},
          ["train.steps=80", "data.n_samples=100", "data.rare_fraction=0.05"])
    out = out / "runs"
    return out


def test_toy_run_files(toy_runs):
    run = load_run(toy_runs / "grad_clip=null")
    assert run.summary["status"] == "completed" and run.summary["vocab"] == list("ABCD")
    rare = set(run.summary["tracked_sentences"]["B"])
    assert len(rare) == 5
    for b in run.batches:
        assert b["words"]["B"] == sum(i in rare for i in b["sentence_ids"])
    geo, cls = run.log(GEOMETRY), run.log(CLASSES)
    assert len(geo) == len(cls) == 80
    rows = np.array([[g["rows"][n] for n in "ABCD"] for g in geo])
    move = np.linalg.norm(np.diff(rows, axis=0), axis=2)  # the logged moves are the real ones
    np.testing.assert_allclose(move, [[g["displacement"][n] for n in "ABCD"] for g in geo[1:]],
                               atol=1e-5)
    E = torch.tensor(rows[-1])
    assert geo[-1]["effective_rank"] == pytest.approx(
        effective_rank(torch.linalg.svdvals(E)), rel=1e-4)
    assert cls[-1]["class_count"]["B"] + cls[-1]["class_count"]["C"] == 5
    assert diagnose(run.path)["run"]  # the reports read a lab run like any other
    assert (run.path / "token_losses.bin").stat().st_size == 80 * 24


def test_a_lab_report_refuses_another_labs_runs(toy_runs, capsys):
    assert main(["report", "depth-explosion", str(toy_runs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this lab reads tabular/mlp runs" in err


def test_toy_report_fills_the_page(toy_runs, tmp_path):
    from minitrain.labs import toy_rare_samples

    page = tmp_path / "README.md"
    page.write_text("<!-- measured:toy-rare-samples-answers -->\nSTALE-TEXT\n"
                    "<!-- /measured:toy-rare-samples-answers -->\n"
                    "<!-- measured:toy-rare-samples -->\n<!-- /measured:toy-rare-samples -->\n")
    results = toy_rare_samples.report(toy_runs, page)["measured"]
    text = page.read_text()
    assert "STALE-TEXT" not in text and "95:5" in text
    r = results[0]
    g = load_run(toy_runs / "grad_clip=null").column("grad_norm_pre_clip")
    assert r["norm at common steps (median)"] == pytest.approx(
        np.median(np.delete(g, toy_rare_samples.rare_steps(load_run(r["path"])))))
    assert (toy_runs / "trajectories-95-5.png").stat().st_size > 10_000


def test_tabular_and_depth_runs(tmp_path):
    from minitrain.labs import depth_explosion, tabular_classifier

    tab = tmp_path / "tab"
    sweep(TAB, tab, {"optimizer.grad_clip": [1.0, None]}, ["train.steps=40"])
    res = tabular_classifier.report(tab)["measured"]
    assert len(res["epochs"]["clip 1"]) == 2  # 20 steps an epoch
    run = load_run(tab / "grad_clip=1.0")
    assert max(m["grad_norm_post_clip"] for m in run.metrics) <= 1 + 1e-6
    probs = np.array(run.log(CLASSES)[-1]["probs"])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    deep = tmp_path / "depth"
    sweep(DEPTH, deep, {"model.init_gain": [0.5, 2]}, ["train.steps=11", "model.n_layer=6"])
    layers = load_run(deep / "init_gain=0.5").log(LAYERS)
    assert [r["updates"] for r in layers] == [0, 1, 11]
    assert len(layers[0]["act_grad_norm"]) == 7
    low, high = (depth_explosion.at_init(load_run(deep / f"init_gain={g}")) for g in (0.5, 2))
    assert low["backward gain per layer"] < 1 < high["backward gain per layer"]
    assert depth_explosion.report(deep)["measured"]["runs"] == 2
    # a resumed run first drops the records of steps after its checkpoint, sparse logs too
    from minitrain.core.checkpoint import trim_logs

    trim_logs(deep / "init_gain=0.5", 5)
    run = load_run(deep / "init_gain=0.5")
    assert [r["updates"] for r in run.log(LAYERS)] == [0, 1] and len(run.metrics) == 5
    assert [r["step"] for r in run.log(CLASSES)] == [0]


def test_old_run_directory_without_the_new_keys_still_loads(toy_runs, tmp_path):
    import shutil

    src = toy_runs / "grad_clip=null"
    dst = tmp_path / "old"
    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / "config.resolved.yaml").read_text())
    del cfg["model"]["init_gain"]
    (dst / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
    assert load_run(dst).config["model"]["kind"] == "embed-linear"


def test_the_numerics_reading_follows_its_numbers():
    """The numerics page's words are generated from its table: the outcome is named from the
    rises (against the same 0.1 as every table), a dropped arrival batch is said."""
    from types import SimpleNamespace

    from minitrain.labs.numerics import machine, reading

    def row(rise, skipped="-", status="completed"):
        n = 0 if skipped == "-" else len(skipped.split(", "))
        return {"run": "r", "status": status, "whole-set rise": rise, "at steps": skipped,
                "steps skipped (overflow)": n}

    rows = {(False, "float32"): row(0.9), (False, "bfloat16"): row(0.85),
            (False, "float16"): row(0.02, "400, 1200"), (True, "float32"): row(-0.02),
            (True, "float16"): row(0.3, "10", status="diverged")}
    runs = {k: SimpleNamespace(config={"data": {"arrive_step": 1200}}) for k in rows}
    lines = reading(runs, rows)
    assert lines[0] == "bf16 without the clip: whole-set rise 0.85 against fp32's 0.9: the " \
        "same outcome."
    assert "a different outcome; the arrival's own batch was one of the dropped steps" in \
        lines[1]
    assert lines[2].endswith("(10); whole-set rise 0.3 against fp32's -0.02: a different "
                             "outcome.")
    assert lines[-1] == "Diverged: r."
    assert machine().startswith("Machine: ") and "CPU capability" in machine()
