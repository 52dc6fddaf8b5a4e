"""The source mixer: phases drawn from the seed, valid weights, Exp3 against a hand-computed
case, config errors, and a short real mixture run whose files, reports and pages a user reads."""

import json
import math
import shutil

import pytest
import torch
import yaml

from conftest import ROOT
from minitrain.cli import main
from minitrain.core import config, datasets
from minitrain.core.config import ConfigError
from minitrain.core.mixer import Exp3, MixtureSampler, progress_reward
from minitrain.core.rundir import BATCHES, PHASES, load_run, read_jsonl
from minitrain.core.train import train
from minitrain.labs import capacity, source_shifts
from minitrain.reports.diagnose import diagnose
from minitrain.tools import sweep

LAB = "experiments/source-shifts/config.yaml"
SOURCES = [list(range(0, 5)), list(range(5, 12)), list(range(12, 15))]
NAMES = ["a", "b", "c"]


def _phases(sampler: MixtureSampler, steps: int, loss=lambda t: 1.0) -> list[dict]:
    out = []
    for t in range(steps):
        sampler.next_ids()
        if sampler.phase["step"] == t:
            out.append(dict(sampler.phase))
        sampler.observe(loss(t))
    return out


@pytest.mark.parametrize("schedule", ["seeded", "bandit"])
def test_schedule_is_drawn_from_the_seed(schedule):
    def stream(seed):
        s = MixtureSampler(SOURCES, NAMES, 4, seed, schedule)
        return [s.next_ids() for _ in range(300)], _phases(s, 0)

    ids, _ = stream(42)
    assert ids == stream(42)[0] and ids != stream(7)[0]
    a, b = MixtureSampler(SOURCES, NAMES, 4, 42, schedule), MixtureSampler(SOURCES, NAMES, 4, 42,
                                                                           schedule)
    assert _phases(a, 500) == _phases(b, 500)


@pytest.mark.parametrize("schedule", ["seeded", "bandit"])
def test_phase_lengths_and_weights(schedule):
    phases = _phases(MixtureSampler(SOURCES, NAMES, 4, 3, schedule), 3000,
                     loss=lambda t: 2.0 / (1 + t % 17))
    lengths = [p["length"] for p in phases]
    assert all(7 <= n <= 42 for n in lengths) and {7, 42} <= set(lengths)
    starts = [p["step"] for p in phases]
    assert all(b - a == p["length"] for a, b, p in zip(starts, starts[1:], phases))
    for p in phases:
        w = list(p["weights"].values())
        assert math.isclose(sum(w), 1) and min(w) > 0 and p["weights"][p["lead_name"]] == 0.8
        assert sorted(w) == pytest.approx([0.1, 0.1, 0.8])
    if schedule == "seeded":  # every boundary a shift: the lead never stays
        assert all(a["lead"] != b["lead"] for a, b in zip(phases, phases[1:]))
    else:
        assert all(math.isclose(sum(p["probs"].values()), 1) for p in phases)


def test_equal_weights_placebo_keeps_the_phases():
    shift = _phases(MixtureSampler(SOURCES, NAMES, 4, 9), 400)
    flat = _phases(MixtureSampler(SOURCES, NAMES, 4, 9, lead_share=1 / 3), 400)
    assert [(p["step"], p["lead"]) for p in flat] == [(p["step"], p["lead"]) for p in shift]
    assert all(len(set(p["weights"].values())) == 1 for p in flat)


def test_sentences_come_from_their_phase_weights():
    s = MixtureSampler(SOURCES, NAMES, 64, 0, phase_min=40, phase_max=40)
    ids = [i for _ in range(40) for i in s.next_ids()]
    lead = SOURCES[s.phase["lead"]]
    share = sum(i in lead for i in ids) / len(ids)
    assert 0.75 < share < 0.85  # 0.8 expected; 2560 draws


def test_exp3_update_by_hand():
    b = Exp3(3, gamma=0.3)
    assert b.probs() == pytest.approx([1 / 3] * 3)
    b.update(1, 0.6)  # x_hat = 0.6 / (1/3) = 1.8; w_1 = exp(0.3 * 1.8 / 3) = exp(0.18)
    w1 = math.exp(0.18)
    assert b.probs()[1] == pytest.approx(0.7 * w1 / (w1 + 2) + 0.1)
    assert b.probs()[0] == pytest.approx(0.7 / (w1 + 2) + 0.1)
    assert progress_reward([4.0, 4.0, 4.0, 3.0, 2.0, 2.0, 2.0]) == pytest.approx(0.5)
    assert progress_reward([1.0, 1.0, 1.0, 2.0, 2.0, 2.0]) == 0  # a rise earns nothing
    assert progress_reward([1.0, float("nan"), 1.0]) == 0


def test_bandit_rewards_the_phase_that_just_ended():
    s = MixtureSampler(SOURCES, NAMES, 2, 5, "bandit", gamma=0.3)
    losses = [5.0, 4.0, 3.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    s.next_ids()
    first, ref = dict(s.phase), Exp3(3, 0.3)
    for t in range(first["length"]):
        if t:
            s.next_ids()
        s.observe(losses[t % len(losses)])
    seen = [losses[t % len(losses)] for t in range(first["length"])]
    s.next_ids()  # the second phase starts: the first one's lead is rewarded
    r = progress_reward(seen)
    ref.update(first["lead"], r)
    assert s.phase["reward_prev"] == pytest.approx(r)
    assert list(s.phase["probs"].values()) == pytest.approx(ref.probs())


def test_state_dict_resumes_the_same_stream():
    a = MixtureSampler(SOURCES, NAMES, 4, 1, "bandit")
    for t in range(50):
        a.next_ids()
        a.observe(1.0 / (t + 1))
    b = MixtureSampler(SOURCES, NAMES, 4, 99, "bandit")
    b.load_state_dict(a.state_dict())
    for t in range(50, 120):
        assert a.next_ids() == b.next_ids()
        a.observe(1.0 / (t + 1))
        b.observe(1.0 / (t + 1))
    assert a.phase == b.phase


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("text,key", [
    ("data: {kind: mixture, sources: [a.txt]}", "data.sources"),
    ("data: {schedule: ucb}", "data.schedule"),
    ("data: {phase_min: 0}", "data.phase_min"),
    ("data: {phase_min: 10, phase_max: 9}", "data.phase_max"),
    ("data: {lead_share: 1.5}", "data.lead_share"),
    ("data: {bandit_gamma: 0}", "data.bandit_gamma"),
    ("data: {sources: notes.txt}", "data.sources"),
    ("data: {phase_len: 7}", "data.phase_len"),
])
def test_bad_mixer_keys_name_file_and_key(tmp_path, text, key):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(e.value).startswith(f"{p}: {key}:") and "\n" not in str(e.value)


def test_cli_bad_mixer_key_and_missing_source_are_one_line(tmp_path, capsys):
    def cli(*overrides):
        code = main(["train", LAB, "--out", str(tmp_path / "run"),
                     *(f"--set={o}" for o in overrides)])
        return code, capsys.readouterr().err
    for (code, err), key in ((cli("data.phase_max=3"), "data.phase_max"),
                             (cli("data.sources=[corpus/sources/notes.txt, nope.txt]"),
                              "nope.txt")):
        assert code == 2 and key in err
        assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_shipped_mixture_config_and_sweeps_validate():
    cfg = config.load(ROOT / LAB)
    assert all((ROOT / p).is_file() for p in cfg.data.sources)
    ds = datasets.build(cfg)
    assert len(ds.source_of) == ds.n and sorted(set(ds.source_of)) == ["notes", "prose", "qa"]
    for name in ("source-shifts", "capacity"):
        spec = sweep.load_spec(ROOT / f"experiments/{name}/sweep.yaml")
        assert spec.runs()


@pytest.fixture(scope="module")
def mixture_runs(tmp_path_factory):
    """Two short real runs of the lab config, a tiny model, short phases, clip off and on."""
    out = tmp_path_factory.mktemp("mix")
    for clip in ("null", "1.0"):
        cfg = config.load(ROOT / LAB, [
            "model.n_embd=16", "model.n_layer=1", "model.n_head=2", "train.steps=70",
            "optimizer.warmup_steps=5", "data.phase_min=7", "data.phase_max=12",
            f"optimizer.grad_clip={clip}"])
        assert train(cfg, out / f"clip-{clip}", progress=False)["status"] == "completed"
    return out


def test_a_mixture_run_records_sources_and_phases(mixture_runs):
    run = load_run(mixture_runs / "clip-null")
    src = json.loads((run.path / "summary.json").read_text())["sources"]
    ranges, start = {}, 0
    for name in ("notes", "prose", "qa"):
        ranges[name] = range(start, start + src[name]["train"])
        start += src[name]["train"]
    batches = read_jsonl(run.path / BATCHES)
    assert len(batches) == 70
    for b in batches:
        assert len(b["sources"]) == len(b["sentence_ids"])
        assert all(i in ranges[s] for i, s in zip(b["sentence_ids"], b["sources"]))
    phases = run.log(PHASES)
    assert phases[0]["step"] == 0 and all(7 <= p["length"] <= 12 for p in phases)
    assert [p["step"] for p in phases] == sorted({p["step"] for p in phases})
    for p in phases:  # the lead holds most of its phase's sentences
        sents = [s for b in batches[p["step"]:p["step"] + p["length"]] for s in b["sources"]]
        assert sents.count(p["lead_name"]) > len(sents) / 2
    spikes = diagnose(run.path, min_ratio=1.0, z=0.01)["spikes"]  # a bar low enough to flag
    assert spikes and all(x["batch"]["sources"] == batches[x["step"]]["sources"] for x in spikes)
    assert run.tokenizer().vocab_size == yaml.safe_load(
        (run.path / "config.resolved.yaml").read_text())["data"]["vocab_size"]


def test_lab_reports_fill_their_pages(mixture_runs, tmp_path):
    page = tmp_path / "page.md"
    blocks = ["source-shifts-answers", "source-shifts", "capacity-answers", "capacity",
              "capacity-runs"]
    page.write_text("".join(f"<!-- measured:{b} -->\nold\n<!-- /measured:{b} -->\n"
                            for b in blocks), encoding="utf-8")
    results = source_shifts.report(mixture_runs, page)["measured"]
    # capacity compares model sizes: the two runs and one of another width
    sizes = tmp_path / "sizes"
    for run in ("clip-null", "clip-1.0"):
        shutil.copytree(mixture_runs / run, sizes / run)
    cfg = config.load(ROOT / LAB, [
        "model.n_embd=24", "model.n_layer=1", "model.n_head=2", "train.steps=70",
        "optimizer.warmup_steps=5", "data.phase_min=7", "data.phase_max=12"])
    assert train(cfg, sizes / "wider", progress=False)["status"] == "completed"
    cells = capacity.report(sizes, page)["measured"]
    text = page.read_text()
    assert "old" not in text and "boundaries flagged" in text
    assert (mixture_runs / "boundaries.png").read_bytes()[:4] == b"\x89PNG"
    assert (sizes / "capacity.png").is_file()
    for m in results:
        assert m["boundaries"] >= 3 and m["boundaries"] == len(m["_marks"])
        assert 0 <= m["diagnose: boundaries flagged"] <= m["boundaries"]
    assert {c["clip"] for c in cells} == {"no clip", "clip 1"}
    assert torch.isfinite(torch.tensor([m["loss bump at boundaries (median)"]
                                        for m in results])).all()


def test_a_resumed_mixture_run_writes_the_same_logs(tmp_path):
    def cfg(steps):
        return config.load(ROOT / LAB, [
            "model.n_embd=16", "model.n_layer=1", "model.n_head=2", f"train.steps={steps}",
            "train.checkpoint_every=13", "data.schedule=bandit", "data.phase_min=5",
            "data.phase_max=9", "optimizer.warmup_steps=5"])
    train(cfg(30), tmp_path / "whole", progress=False)
    train(cfg(13), tmp_path / "cut", progress=False)  # a checkpoint at step 13
    train(cfg(30), tmp_path / "cut", progress=False, resume=True)
    for name in (BATCHES, PHASES):  # the bandit's state came back whole
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    cut, whole = load_run(tmp_path / "cut"), load_run(tmp_path / "whole")
    for key in ("loss", "grad_norm_pre_clip"):  # (step 12 was the cut run's last: evaluated)
        assert cut.column(key).tolist() == whole.column(key).tolist()
