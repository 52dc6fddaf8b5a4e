"""The break/fix catalogue on short runs (300 steps of the exercises' own model and corpus):
three blind rounds of every break (seeds 0, 1, 2), trained two at a time. diagnose names each
folder's break and each reference as healthy from the logs alone (the folders carry the
reference's config; given back their own, the verdict is the same); a round scored with
diagnose's own answers is n/n; `sample` draws what the checkpoint says."""

import base64
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest
import yaml

from conftest import ROOT
from minitrain.core import rundir
from minitrain.exercises import catalogue
from minitrain.exercises.causes import CAUSES, diagnose
from minitrain.reports import text
from minitrain.reports.pages import block_text, blocks, table_rows
from minitrain.tools import exercise

SEEDS = (0, 1, 2)
STEPS = 300


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minitrain", *args], cwd=ROOT,
                          capture_output=True, text=True)


def _blind(args):
    out, seed = args
    quick = [] if seed == SEEDS[0] else ["--no-dashboard"]  # one round is enough to see them
    r = _cli("exercise", "blind", "--out", str(out), "--seed", str(seed), "--breaks", "all",
             "--steps", str(STEPS), *quick)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    root = tmp_path_factory.mktemp("blind")
    with ProcessPoolExecutor(2) as pool:
        return dict(zip(SEEDS, pool.map(_blind, [(root / f"seed-{s}", s) for s in SEEDS])))


def test_every_break_is_in_the_registry_with_its_configs():
    assert set(catalogue.BREAKS) | {"healthy", "no-clip-rare-batch"} == set(CAUSES)
    for name in catalogue.BREAKS:
        for role, path in catalogue.configs(ROOT, name).items():
            assert path.is_file(), f"{name} {role}: no {path}"


@pytest.mark.parametrize("seed", SEEDS)
def test_diagnose_names_every_break_and_the_reference_from_the_logs(rounds, seed):
    out = rounds[seed]
    mapping = exercise.reveal(out)
    assert sorted(mapping.values()) == sorted(catalogue.BREAKS)
    ref = (out / "reference" / rundir.CONFIG).read_text()
    assert (out / "01" / "dashboard.html").is_file() == (seed == SEEDS[0])
    for page in out.glob("*/dashboard.html"):  # the dashboards name no break either
        html = page.read_text(encoding="utf-8")
        assert not [w for w in [*catalogue.BREAKS, "init_std", "decay_steps"] if w in html]
    for label, truth in mapping.items():
        assert (out / label / rundir.CONFIG).read_text() == ref  # nothing names the break
        assert diagnose(out / label)["cause"]["name"] == truth, (label, truth)
    assert diagnose(out / "reference")["cause"]["name"] == "healthy"


def test_given_back_its_own_config_a_folder_reads_the_same(rounds, tmp_path):
    out = rounds[0]
    sealed = exercise.sealed(out)
    for label, own in sealed["configs"].items():
        copy = tmp_path / label
        shutil.copytree(out / label, copy)
        (copy / rundir.CONFIG).write_text(own)
        assert yaml.safe_load(own) != yaml.safe_load((out / label / rundir.CONFIG).read_text())
        assert diagnose(copy)["cause"] == diagnose(out / label)["cause"]


def test_a_round_scored_with_diagnoses_own_answers_is_n_of_n(rounds):
    out = rounds[1]
    r = _cli("exercise", "score", str(out), "--self")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(f"score: {len(catalogue.BREAKS)}/{len(catalogue.BREAKS)}")
    r = _cli("exercise", "reveal", str(out), "--json")
    assert json.loads(r.stdout) == exercise.reveal(out)


def test_a_wrong_answer_scores_wrong_and_the_sealed_file_does_not_read_plainly(rounds,
                                                                             tmp_path):
    out = tmp_path / "round"
    shutil.copytree(rounds[2], out)
    mapping = exercise.reveal(out)
    first, second = sorted(mapping)[:2]
    (out / exercise.ANSWERS).write_text(f"{first}: {mapping[second]}\n"
                                        f"{second}: {{cause: {mapping[second]}, notes: v}}\n")
    result = exercise.score(out)
    right = {r["folder"]: r["right"] for r in result["rows"]}
    assert right[first] is False and right[second] is True and result["right"] == 1
    raw = (out / exercise.SEALED).read_bytes()
    assert not any(name.encode() in raw for name in catalogue.BREAKS)
    assert json.loads(base64.b64decode(raw))["mapping"] == mapping
    (out / exercise.ANSWERS).write_text("- not a mapping\n")
    r = _cli("exercise", "score", str(out))
    assert r.returncode == 2 and "diagnoses.yaml" in r.stderr and "Traceback" not in r.stderr


def test_blind_refuses_bad_input_in_one_line(tmp_path):
    for args, what in ((["--breaks", "bad-init,nope"], "--breaks"),
                       (["--breaks", "bad-init,bad-init"], "--breaks")):
        r = _cli("exercise", "blind", "--out", str(tmp_path / "x"), *args)
        assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr
    r = _cli("exercise", "score", str(tmp_path))
    assert r.returncode == 2 and "SEALED" in r.stderr
    r = _cli("exercise", "run", "nope")
    assert r.returncode == 2 and "unknown exercise" in r.stderr


def test_sample_reads_the_checkpoint(rounds):
    out = rounds[0]
    ref = out / "reference"
    greedy = text.sample(ref, temperature=0, n=2)
    assert greedy["samples"][0] == greedy["samples"][1]  # greedy: no draw
    assert greedy["checkpoint_step"] == STEPS  # a completed run checkpoints its last step
    a, b = text.sample(ref, n=8, seed=3), text.sample(ref, n=8, seed=3)
    assert a == b and a != text.sample(ref, n=8, seed=4)
    corpus = set((ROOT / "corpus/train.txt").read_text().splitlines())
    for s in a["samples"]:  # judged on the run's logs, checked against the corpus file
        assert s["training_sentence"] == (s["text"].strip() in corpus)
    leak = next(out / k for k, v in exercise.reveal(out).items() if v == "causal-leak")
    assert text.sample(leak, n=8)["eos_share"] < a["eos_share"]
    r = _cli("sample", str(ref), "--tokens", "0")
    assert r.returncode == 2 and "--tokens" in r.stderr


def _num(cell: str) -> float:
    return float(cell.rstrip("%")) / (100 if cell.endswith("%") else 1)


# what each page's words claim about its runs, checked against its own measured table
CLAIMS = {
    "bad-init": lambda t: (_num(t["step-0 batch loss (ln V: uniform guess)"]["break"]) >
                           2 * _num(t["ln V"]["break"]) and
                           _num(t["steps clipped"]["break"]) > 0.95 and
                           abs(_num(t["weight norm at the end"]["break"]) /
                               _num(t["weight norm at step 0"]["break"]) - 1) < 0.1 and
                           t["lr at step 0"]["break"] == t["lr at step 0"]["control"] and
                           t["peak lr"]["break"] == t["peak lr"]["control"]),
    "no-warmup": lambda t: (t["lr at step 0"]["break"] == t["peak lr"]["break"] and
                            abs(_num(t["largest single-weight change at step 0"]["break"]) /
                                _num(t["lr at step 0"]["break"]) - 1) < 0.05 and
                            _num(t["lr at step 0"]["fix"]) < _num(t["peak lr"]["fix"]) and
                            _num(t["lr at step 0"]["control"]) < _num(t["peak lr"]["control"])),
    "causal-leak": lambda t: (_num(t["lowest whole-set train loss"]["break"]) <
                              _num(t["corpus floor for a causal model"]["break"]) and
                              _num(t["validation loss at the end"]["break"]) <
                              _num(t["validation loss at the end"]["control"])),
    "lr-too-high": lambda t: (_num(t["weight norm at the end"]["break"]) >
                              _num(t["weight norm at the end"]["control"]) and
                              _num(t["median pre-clip gradient norm"]["break"]) <
                              _num(t["median pre-clip gradient norm"]["control"]) and
                              _num(t["lr at step 0"]["break"]) < 0.1 *
                              _num(t["peak lr"]["break"]) and
                              t["lr under 1% of peak from step"]["break"] == "never"),
    "lr-schedule": lambda t: (int(t["lr under 1% of peak from step"]["break"]) < 650 and
                              0.5 < _num(t["median pre-clip gradient norm"]["break"]) /
                              _num(t["median pre-clip gradient norm"]["control"]) < 2 and
                              _num(t["median update norm over the last third"]["break"]) == 0
                              and _num(t["whole-set train loss at the end"]["fix"]) <
                              _num(t["whole-set train loss at the end"]["break"])),
}


@pytest.mark.parametrize("name", catalogue.BREAKS)
def test_each_page_says_what_its_runs_measured(name):
    """The blocks are filled (by `minitrain exercise run NAME`), the quiz block is what the
    quiz computes now, diagnose named the break and healthy for the control and the fix, and
    the page's words about its runs hold in its own table."""
    from minitrain.exercises import quiz, sheet

    page = catalogue.folder(ROOT, name) / "README.md"
    assert set(sheet.BLOCKS) <= blocks(page)
    assert block_text(page, "quiz").strip() == quiz.block(name).strip()
    causes = dict(re.findall(r"- \*\*(\w+)\*\*: `([\w-]+)`", block_text(page, "cause")))
    assert causes == {role: (name if role == "break" else "healthy")
                      for role in catalogue.configs(ROOT, name)}
    assert CLAIMS[name](table_rows(block_text(page, "runs")))
    eos = dict(re.findall(r"\*\*(\w+)\*\* \(checkpoint.*?samples (\d+)% end with EOS",
                          block_text(page, "samples")))
    assert set(eos) == set(causes)
    if name == "causal-leak":  # "garbage that never ends"
        assert int(eos["break"]) < 20 <= int(eos["control"])


def test_the_catalogue_page_lists_the_registry():
    page = (ROOT / "experiments/break-it/README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([\w-]+)` \| [^|]+ \| `experiments/([\w-]+)/README.md` \|$",
                        page, re.M)
    assert [a for a, _ in listed] == list(catalogue.BREAKS) == [b for _, b in listed]
    rounds = block_text(ROOT / "experiments/break-it/README.md", "rounds")
    right, n = map(int, re.search(r"named (\d+) of (\d+) runs right", rounds).groups())
    assert n >= 3 * (len(catalogue.BREAKS) + 1) and right == n


@pytest.mark.parametrize("name", ["phase-19", "theory-02", "stability-check"])
def test_the_theory_quizzes_are_what_the_code_computes(name):
    from minitrain.exercises import quiz

    assert block_text(quiz.page(ROOT, name), "quiz").strip() == quiz.block(name).strip()


def test_the_quiz_asks_checks_and_works_the_answer():
    from minitrain.exercises import quiz

    right = quiz.QUIZZES["theory-02"][0].answer()
    r = subprocess.run([sys.executable, "-m", "minitrain", "exercise", "quiz", "theory-02"],
                       cwd=ROOT, capture_output=True, text=True, input=f"{right:.4f}\n7\n")
    assert r.returncode == 0, r.stderr
    assert "right: min(1, 1.0 / 3.5)" in r.stdout and "not quite: min(1, 1.0 / 0.4)" in r.stdout
    assert r.stdout.strip().endswith("quiz theory-02: 1/3 (1 not answered)")
    assert right == pytest.approx(1 / 3.5) and quiz.QUIZZES["theory-02"][2].answer() == \
        pytest.approx(5 * 0.9 ** 10)  # the code agrees with the algebra on the page


def test_a_synthetic_run_is_not_judged_and_writes_no_text(tmp_path):
    out = tmp_path / "toy"
    r = _cli("train", "experiments/toy-rare-samples/config.yaml", "--out", str(out), "--quiet",
             "--set", "train.steps=20")
    assert r.returncode == 0, r.stderr
    assert diagnose(out)["cause"]["name"] == "not judged"
    r = _cli("sample", str(out))
    assert r.returncode == 2 and "only a GPT writes text" in r.stderr
