"""What the terminal shows reads well: summary lines rounded ("whole-set loss 0.386", "not
within the run"), plain progress lines when stderr is not a terminal, one line refusing to
compare runs of different kinds, every recipe described in one line by `just --list`, and
the choices named in --help. Short toy runs: seconds."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from minitrain.cli import main
from minitrain.core import config
from minitrain.core.train import train
from minitrain.labs import LABS

TOY = "experiments/toy-rare-samples/config.yaml"


def _sig_digits(text: str) -> int:
    return len(text.replace(".", "").lstrip("0"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("term") / "toy"
    train(config.load(ROOT / TOY, ["train.steps=70", "data.n_samples=70"]), out, progress=False)
    return out


def test_train_prints_plain_progress_and_a_rounded_last_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", TOY, "--set", "train.steps=30", "--set", "data.n_samples=30",
                 "--out", str(out)]) == 0
    cap = capsys.readouterr()
    lines = cap.err.splitlines()  # captured: not a terminal
    assert [int(re.match(r"run step (\d+)/30 \| loss .* tok/s$", x).group(1)) for x in lines] \
        == list(range(3, 31, 3))
    last = cap.out.strip().splitlines()[-1]
    m = re.fullmatch(rf"{re.escape(str(out))}: completed after 30 steps, whole-set loss "
                     r"([\d.]+), (\d+\.\d) s", last)
    assert m and _sig_digits(m.group(1)) <= 3, last
    summary = json.loads((out / "summary.json").read_text())
    assert float(m.group(1)) == pytest.approx(summary["final_train_loss"], rel=5e-3)


def test_diagnose_rounds_and_says_when_the_loss_never_came_back(toy, tmp_path, capsys):
    """A copy of a real run with a norm spike written in at step 50 and a whole-set loss that
    stays up after it."""
    from minitrain.reports.diagnose import diagnose, print_report

    run = tmp_path / "spiked"
    shutil.copytree(toy, run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows[50:]:
        r["train_loss"] = r["train_loss"] + 2.0 if r["train_loss"] is not None else None
    rows[50]["grad_norm_pre_clip"] = 1e4
    rows[50]["loss"] = 7.123456789
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = diagnose(run)
    assert [s["step"] for s in result["spikes"]] == [50]
    print_report(result)
    text = capsys.readouterr().out
    assert "None" not in text and "7.123456789" not in text and "loss 7.123," in text
    assert "back within 10% of the rise: not within the run" in text
    assert all(len(x) < 400 for x in text.splitlines())  # whole lines, no wrapping at 80
    assert any(len(x) > 80 for x in text.splitlines())


def test_compare_refuses_runs_of_different_kinds_in_one_line(toy, tmp_path, capsys):
    tab = tmp_path / "tab"
    train(config.load(ROOT / "experiments/tabular-classifier/config.yaml", ["train.steps=3"]),
          tab, progress=False)
    assert main(["compare", str(toy), str(tab)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different kinds" in err[0] and "data tabular" in err[0], err


def test_report_help_names_every_lab(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in LABS:
        assert re.search(rf"^  {re.escape(name)} +\S", text, re.M), name


def test_just_list_describes_every_recipe_in_one_line():
    """`just --list` shows only the last line of a comment above a recipe: a recipe whose
    comment runs over several lines says its summary in a [doc(...)] attribute."""
    lines = (ROOT / "justfile").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"([a-z][\w-]*)[^=]*:(?!=)", line)
        if not m or i < 2:
            continue
        above = lines[i - 1]
        if above.startswith("[doc("):
            continue
        assert above.startswith("#"), f"recipe {m.group(1)}: no comment to describe it"
        assert not lines[i - 2].startswith("#"), \
            f"recipe {m.group(1)}: a comment over several lines; add [doc(\"one line\")]"
    just = shutil.which("just", path=str(Path(sys.executable).parent)) or shutil.which("just")
    if just:  # the recipes as just itself reads them
        dump = json.loads(subprocess.run([just, "--dump", "--dump-format", "json"], cwd=ROOT,
                                         capture_output=True, text=True, check=True).stdout)
        assert all(r["doc"] for r in dump["recipes"].values())
