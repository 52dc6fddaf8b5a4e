"""The sweep (run, resume, summarise, bad specs) and diagnose on a corpus whose rare word is
not "written", built here, with no change to any code."""

import csv
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from minitrain.core import config
from minitrain.core.corpus import read_sentences
from minitrain.core.train import train
from minitrain.exercises import phase19
from minitrain.reports.diagnose import diagnose
from minitrain.tools import sweep
from minitrain.tools.branch import config_gap

COMPASS = ["The old compass pointed north across the frozen lake.",
           "Grandpa kept a brass compass in his coat pocket.",
           "Without a compass the hikers followed the river.",
           "The sailor checked the compass before every turn.",
           "A small compass hung from the zipper of her bag."]


def test_diagnose_names_another_rare_word(tmp_path):
    """The shipped corpus without its "written" sentences, plus five "compass" ones: the
    arrival regime, shortened, and diagnose finds the step, batch, piece, word and rows."""
    lines = [s for s in read_sentences(ROOT / "corpus/train.txt") if "written" not in s]
    for i, s in zip((30, 70, 110, 150, 195), COMPASS):
        lines.insert(i, s)
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = config.load(ROOT / "experiments/19-break-no-clip/config.yaml", [
        f"data.train={tmp_path / 'train.txt'}", "data.tracked_words=[compass]",
        "train.steps=450", "data.arrive_step=400", "model.n_layer=1"])
    train(cfg, tmp_path / "run", progress=False)
    result = diagnose(tmp_path / "run")
    (spike,) = [s for s in result["spikes"] if s["step"] == 400]
    assert sorted(spike["batch"]["texts"][:5]) == sorted(COMPASS)
    top = spike["loss_carriers"][0]
    assert top["piece"] == "▁compass" and top["words"] == ["compass"]
    assert top["usual_loss"] is None  # never a target before it arrived
    assert spike["norm_carriers"]["embedding_rows"][0]["piece"] == "▁compass"
    head = [m for m in spike["moments"] if m["table"] == "head"][0]
    assert head["piece"] == "▁compass" and head["v_jump"] > 10
    assert all(s["step"] >= 400 for s in result["spikes"])  # nothing flagged before it


SPEC = """\
base: {base}
seeds: [1, 2]
jobs: 2
out: {out}
set:
  - train.extra_logs=[]
  - train.steps=160
  - data.arrive_step=120
  - model.n_layer=1
  - model.n_embd=32
  - model.n_head=2
  - optimizer.warmup_steps=10
cells:
  no clip: []
  clip 0.5: [optimizer.grad_clip=0.5]
"""


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minitrain", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_sweep_runs_resumes_and_summarises(tmp_path):
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(SPEC.format(base=ROOT / "experiments/19-break-no-clip/config.yaml",
                                     out=tmp_path / "runs"), encoding="utf-8")
    spec = sweep.load_spec(spec_path)
    assert sweep.run(spec, log=lambda *_: None) == {"already done": 0, "completed": 4}
    assert sweep.run(spec, log=lambda *_: None) == {"already done": 4}  # resumable
    run = tmp_path / "runs/clip-0.5/seed-2"
    assert (run / "metrics.jsonl").is_file() and not (run / "moments.jsonl").exists()
    assert "seed: 2" in (run / "config.resolved.yaml").read_text()
    table = phase19.report(spec)["measured"]
    assert [r["cell"] for r in table] == ["no clip", "clip 0.5"]
    assert all(r["runs"] == 2 for r in table)
    # clip 0.5 acts on most ordinary steps of this model; no clip on none
    assert table[0]["clipped ordinary steps"] == 0 and table[1]["clipped ordinary steps"] > 0.5
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 4 and {r["seed"] for r in rows} == {"1", "2"}
    assert "| no clip | 2 |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


# the small sweep's runs, with every log (token losses and moments too), for one seed
BRANCH_SPEC = SPEC.split("cells:")[0].replace("[1, 2]", "[1]").replace(
    "  - train.extra_logs=[]\n", "") + """\
branch_from: no clip
cells:
  no clip: [train.checkpoint_every=120]
  stratified: [data.sampler=arrival-spread, data.arrive_gap=1]
  skip z>6: [optimizer.skip_z=6]
  clip 0.5 from 120: [optimizer.grad_clip=0.5, optimizer.clip_from_step=120]
  clip 0.5: [optimizer.grad_clip=0.5]
"""


def test_branched_runs_equal_runs_trained_from_scratch(tmp_path):
    """Cells that provably train like the source until its checkpoint start from it; every
    log they write (token losses and moments included) is byte for byte a from-scratch run's.
    A cell whose clip would have acted earlier is refused and trained from scratch; one whose
    clip starts at the checkpoint branches (it is the source until then)."""
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(BRANCH_SPEC.format(base=ROOT / "experiments/19-break-no-clip/config.yaml",
                                            out=tmp_path / "runs"), encoding="utf-8")
    spec = sweep.load_spec(spec_path)
    lines = []
    counts = sweep.run(spec, log=lines.append)
    assert counts == {"already done": 0, "completed": 5, "branched": 3}
    assert any("clip-0.5" in ln and "from scratch: the clip would have acted at step 0" in ln
               for ln in lines)
    for label, overrides, path in spec.runs()[1:4]:
        summary = json.loads((path / "summary.json").read_text())
        assert summary["branched_from"]["step"] == 120 and summary["status"] == "completed"
        scratch = tmp_path / "scratch" / path.parent.name
        train(config.load(spec.base, overrides), scratch, progress=False)
        for name in ("config.resolved.yaml", "metrics.jsonl", "batches.jsonl", "moments.jsonl",
                     "token_losses.bin"):
            assert (path / name).read_bytes() == (scratch / name).read_bytes(), (label, name)
        assert not (path / "checkpoint.pt").exists() and not (scratch / "checkpoint.pt").exists()
    # the skip cell's guard statistics were replayed: its log has z-scores from the start
    metrics = [json.loads(ln) for ln in (spec.runs()[2][2] / "metrics.jsonl").open()]
    assert metrics[100]["grad_z"] is not None and not any(m["skipped"] for m in metrics[:120])


SUGGESTED_SPEC = SPEC.split("cells:")[0] + """\
branch_from: no clip
cells:
  no clip: [train.checkpoint_every=120]
  suggested from 120: [optimizer.grad_clip=@suggested_clip, optimizer.clip_from_step=120]
"""


def test_a_suggested_clip_is_each_seeds_own(tmp_path):
    """@suggested_clip becomes, per seed, the clip diagnose suggests from that seed's source
    run before the clip starts; the guarded run waits for its source, then branches from it,
    and its config holds the number."""
    from minitrain.core.rundir import load_run
    from minitrain.reports.measure import suggest_clip

    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(SUGGESTED_SPEC.format(
        base=ROOT / "experiments/19-break-no-clip/config.yaml", out=tmp_path / "runs"),
        encoding="utf-8")
    spec = sweep.load_spec(spec_path)
    assert sweep.run(spec, log=lambda *_: None) == {"already done": 0, "completed": 4,
                                                     "branched": 2}
    clips = []
    for seed in (1, 2):
        source = load_run(tmp_path / f"runs/no-clip/seed-{seed}")
        guarded = load_run(tmp_path / f"runs/suggested-from-120/seed-{seed}")
        clips.append(guarded.config["optimizer"]["grad_clip"])
        assert clips[-1] == suggest_clip(source, 120)
        assert guarded.summary["branched_from"]["step"] == 120
    assert clips[0] != clips[1]  # each seed its own
    assert sweep.run(spec, log=lambda *_: None) == {"already done": 4}  # resolved, then found
    table = {r["cell"]: r for r in phase19.report(spec)["measured"]}
    assert table["suggested from 120"]["median clip"] == pytest.approx(sum(clips) / 2)


def test_a_suggested_clip_needs_a_source(tmp_path):
    text = SPEC.split("cells:")[0] + "cells:\n  a: [optimizer.grad_clip=@suggested_clip]\n"
    (tmp_path / "s.yaml").write_text(text.format(base=ROOT / "experiments/19-control/config.yaml",
                                                 out=tmp_path / "runs"), encoding="utf-8")
    proc = _cli("sweep", str(tmp_path / "s.yaml"))
    assert proc.returncode == 2 and "@suggested_clip is read from the branch_from" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_branch_refuses_configs_that_differ_before_the_checkpoint():
    base = ROOT / "experiments/19-break-no-clip/config.yaml"
    src = config.load(base)
    assert config_gap(src, config.load(base, ["optimizer.clip_z=2.5"])) is None  # judged on logs
    assert "data.sampler differs" in config_gap(src, config.load(base,
                                                                 ["data.sampler=arrival-seen"]))
    assert "optimizer.lr differs" in config_gap(src, config.load(base, ["optimizer.lr=0.001"]))
    spread = config.load(base, ["data.sampler=arrival-spread"])
    assert config_gap(src, spread, step=1200) is None
    assert "after data.arrive_step" in config_gap(src, spread, step=1201)


@pytest.mark.parametrize("text,message", [
    ("base: x.yaml\nseeds: 0\ncells: {a: []}\n", "seeds: expected a positive count"),
    ("base: experiments/19-control/config.yaml\nseeds: 2\ncells: {a: [optimizer.lr=-1]}\n",
     "optimizer.lr: must be > 0"),
    ("base: experiments/19-control/config.yaml\nseeds: 2\ncells: []\n", "cells: expected"),
    ("base: experiments/19-control/config.yaml\nseeds: 2\ncells: {a: []}\nworkers: 3\n",
     "workers: unknown key"),
    ("base: experiments/19-control/config.yaml\nseeds: 2\ncells: {a: []}\nblock: 'a b'\n",
     "block: expected a block name"),
])
def test_bad_sweep_specs_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text, encoding="utf-8")
    proc = _cli("sweep", str(tmp_path / "s.yaml"))
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_shipped_sweep_validates():
    spec = sweep.load_spec(ROOT / "experiments/19-sweep/sweep.yaml")
    assert len(spec.seeds) >= 20 and len(spec.cells) >= 7


def _sweep_block(page, name="sweep"):
    from minitrain.reports.pages import block_text, table_rows

    return table_rows(block_text(page, name))


def _num(cell):
    return float(cell.rstrip("%")) / (100 if cell.endswith("%") else 1)


def test_exercise_page_reading_matches_its_sweep_block():
    """The statements under the exercise page's sweep table, against that table."""
    rows = _sweep_block(ROOT / "experiments/19-break-no-clip/README.md")
    n = {c: int(r["runs"]) for c, r in rows.items()}
    assert min(n.values()) >= 20
    assert all(r["diverged"] == "0" for r in rows.values())
    b = rows["no clip (Run B)"]
    assert int(b["spiked"]) >= 0.9 * n["no clip (Run B)"]
    assert int(b["rise > 0.1"]) >= 0.9 * n["no clip (Run B)"] and b["not back by the end"] == "0"
    for c in ("clip 1.0 (Run A)", "clip 0.5"):
        assert rows[c]["rise > 0.1"] == "0" and _num(rows[c]["clipped ordinary steps"]) >= 0.8
    far = rows["clip 3.0"]
    assert _num(far["clipped ordinary steps"]) < 0.05 and _num(far["ordinary norm"]) < 0.4
    assert 8 <= 3.0 / _num(far["ordinary norm"]) <= 11  # "about nine times the ordinary norm"
    assert int(far["rise > 0.1"]) >= 0.8 * n["clip 3.0"]
    adaptive = rows["adaptive z=2.5"]
    assert int(adaptive["rise > 0.1"]) >= 0.9 * n["adaptive z=2.5"]
    skip = rows["skip z>6"]
    assert int(skip["rise > 0.1"]) <= 0.2 * n["skip z>6"] and _num(skip["skipped steps"]) >= 10
    assert abs(_num(skip["median final - before"])) < 0.5 * abs(
        _num(b["median final - before"]))
    strat = rows["stratified batches"]
    assert int(strat["spiked"]) <= 0.1 * n["stratified batches"]
    assert _num(strat["median ratio"]) < 0.5 * _num(b["median ratio"])
    assert int(strat["rise > 0.1"]) >= 0.9 * n["stratified batches"]
    seen = rows["not rare (seen from step 0)"]
    assert seen["spiked"] == "0" and _num(seen["median whole-set rise"]) < 0.05
    assert int(seen["spiked later"]) >= 1 and 1 <= int(seen["rise > 0.1"]) < int(b["rise > 0.1"])
    # the handout's settings, one at a time
    recipe = {c: rows[c] for c in ("beta2 0.95", "beta2 0.99", "beta2 0.996", "weight decay 0.1",
                                   "cosine lr (to 0.1x)")}
    for c in ("beta2 0.95", "beta2 0.99", "cosine lr (to 0.1x)"):
        assert recipe[c]["rise > 0.1"] == "0", c
    assert 1 <= int(recipe["beta2 0.996"]["rise > 0.1"]) <= 0.25 * n["beta2 0.996"]  # "a few"
    assert int(recipe["weight decay 0.1"]["rise > 0.1"]) < 0.5 * n["weight decay 0.1"]
    assert int(b["rise > 0.1"]) == n["no clip (Run B)"]  # "every seed of Run B"
    for c, r in recipe.items():  # "a fifth of Run B's or less"
        assert _num(r["common sentences"]) <= 0.2 * _num(b["common sentences"]), c
    for c in ("cosine lr (to 0.1x)", "beta2 0.996", "weight decay 0.1"):  # "still spikes"
        assert int(recipe[c]["spiked"]) >= 0.7 * n[c], c
        assert _num(recipe[c]["median ratio"]) > 0.5 * _num(b["median ratio"]), c
    for c in ("beta2 0.95", "beta2 0.99"):  # "about three times", "about a third"
        assert 2.5 <= _num(recipe[c]["ordinary norm"]) / _num(b["ordinary norm"]) <= 3.5, c
        assert 0.2 <= _num(recipe[c]["median ratio"]) / _num(b["median ratio"]) <= 0.4, c
    # the lr at the arrival: "0.19 times the peak"
    from minitrain.core.optim import lr_at

    spec = sweep.load_spec(ROOT / "experiments/19-sweep/sweep.yaml")
    cos = config.load(spec.base, [*spec.common, *spec.cells["cosine lr (to 0.1x)"]])
    o = cos.optimizer
    at = lr_at(1200, 1.0, o.warmup_steps, o.decay_steps or cos.train.steps, o.min_lr_ratio)
    assert round(at, 2) == 0.19


def test_exercise_page_reading_matches_its_guard_block():
    """The statements under the exercise page's guard table, against that table."""
    rows = _sweep_block(ROOT / "experiments/19-break-no-clip/README.md", "sweep-guard")
    b, one, three, suggested = (rows[c] for c in (
        "no clip (Run B)", "clip 1.0 from arrival", "clip 3.0 from arrival",
        "suggested clip from arrival"))
    n = int(b["runs"])
    assert n >= 20 and all(int(r["runs"]) == n and r["diverged"] == "0" for r in rows.values())
    for r in (one, three, suggested):  # one model before the arrival
        assert (r["ordinary norm"], r["median ratio"]) == (b["ordinary norm"], b["median ratio"])
    assert all(r["clipped ordinary steps"] == "0%" for r in rows.values())
    assert int(b["rise > 0.1"]) >= 0.8 * n and int(one["rise > 0.1"]) <= 0.25 * n
    assert _num(one["median whole-set rise"]) < 0.2 * _num(b["median whole-set rise"])
    assert _num(three["median whole-set rise"]) > 0.8 * _num(b["median whole-set rise"])
    assert int(three["rise > 0.1"]) >= 0.8 * n
    ordinary, arrival = _num(b["ordinary norm"]), _num(b["median ratio"]) * _num(b["ordinary norm"])
    assert 8 <= 3.0 / ordinary <= 11 and 3.0 / arrival > 0.5  # "about nine times", "less than half"
    assert abs(_num(one["median final - before"])) < abs(_num(b["median final - before"]))
    # the suggested clip: "a little above the ordinary norm", contains it in every seed, the
    # common sentences hold, the rare ones fall least, the end as far below as Run B's
    assert 1.0 < _num(suggested["median clip"]) / ordinary < 1.5
    assert suggested["rise > 0.1"] == "0" and abs(_num(suggested["common sentences"])) <= 0.1
    others = (_num(r["rare sentences"]) for r in (b, one, three))
    assert _num(suggested["rare sentences"]) > max(others)
    assert abs(_num(suggested["median final - before"]) - _num(b["median final - before"])) < \
        0.2 * abs(_num(b["median final - before"]))


def test_theory_02_shows_the_exercise_pages_sweep_block():
    """One report fills both pages' sweep blocks (just phase-19-sweep): they are one table, so
    the exercise page's checked reading holds for theory/02's too."""
    from minitrain.reports.pages import block_text

    assert block_text(ROOT / "theory/02-optimizer-and-schedule.md", "sweep") == \
        block_text(ROOT / "experiments/19-break-no-clip/README.md", "sweep")


def test_the_stability_checks_clip_rule_is_the_guard_block():
    """theory/stability-check.md states the suggested clip's outcome; the guard block holds it."""
    text = " ".join((ROOT / "theory/stability-check.md").read_text(encoding="utf-8").split())
    assert "kept the whole-set loss from rising above 0.1 in every seed; a clip of 1.0, about " \
        "three times the ordinary norm, in all but a few; 3.0, about nine times, in none" in text
    rows = _sweep_block(ROOT / "experiments/19-break-no-clip/README.md", "sweep-guard")
    b = rows["no clip (Run B)"]
    n, ordinary = int(b["runs"]), _num(b["ordinary norm"])
    assert rows["suggested clip from arrival"]["rise > 0.1"] == "0"
    assert 1.0 < _num(rows["suggested clip from arrival"]["median clip"]) / ordinary < 1.5
    assert 1 <= int(rows["clip 1.0 from arrival"]["rise > 0.1"]) <= 0.25 * n
    assert 2.5 <= 1.0 / ordinary <= 3.5 and 8 <= 3.0 / ordinary <= 11
    assert rows["clip 3.0 from arrival"]["rise > 0.1"] == str(n)


@pytest.mark.parametrize("spec", sorted((ROOT / "experiments").glob("*/sweep.yaml")),
                         ids=lambda p: p.parent.name)
def test_every_shipped_sweep_spec_validates(spec):
    """Every run a shipped spec would start has a valid config (load_spec checks them all)."""
    assert sweep.load_spec(spec).runs()


def test_the_handout_sweep_block_reads_its_own_table():
    """The handout's setup over 20 seeds (just phase-19-handout-sweep): the page's reading is
    generated with its table, and says the same counts."""
    from minitrain.exercises.handout_batches import markdown
    from minitrain.reports.pages import block_text, blocks, table_rows

    page = ROOT / "experiments/19-break-no-clip/README.md"
    assert "handout-sweep" in blocks(page)
    block = block_text(page, "handout-sweep")
    for row in table_rows(block).values():
        cell, runs, several, spiked, nan = (list(row.values())[i] for i in (0, 1, 2, 6, 8))
        assert f"{cell}: {several} of {runs} runs ever drew" in block
        assert f"{spiked} spiked at its rarest batch, {nan} ended in NaN" in block
    fake = [{"cell": "c", "status": "completed", "most_rare": 3, "at_step": 9,
             "batches_with_several": 1, "ratio": 40.0, "spiked_there": True, "spikes": 1,
             "diverged": True}]
    assert "1 of the runs spiked at their rarest batch, 1 of them ended in NaN" in \
        markdown(fake)
