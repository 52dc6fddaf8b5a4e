"""Every lab and exercise in the registries, walked: its configs load, its page has the blocks
it fills, its report refuses every other lab's runs in one clear line, and the plug-ins import
from the training side only what they may. On tiny fake run directories: seconds, no training."""

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import ROOT
from minitrain.cli import main
from minitrain.core import config, rundir
from minitrain.core.rundir import RunDirError
from minitrain.exercises import EXERCISES
from minitrain.labs import LABS
from minitrain.reports.pages import blocks
from minitrain.tools import sweep

PLUGINS = {**LABS, **EXERCISES}
SAMPLE = 8  # fake runs per lab, spread over its sweep: enough to show what varies


def _configs(folder: str) -> list[config.Config]:
    """The configs of the runs an experiment folder's recipe makes: its sweep's, or its own."""
    here = ROOT / "experiments" / folder
    if (here / "sweep.yaml").is_file():
        spec = sweep.load_spec(here / "sweep.yaml")
        cfgs = [config.load(spec.base, sweep.stand_in(ov)) for _, ov, _ in spec.runs()]
    else:
        cfgs = [config.load(here / "config.yaml")]
    step = max(1, len(cfgs) // SAMPLE)
    return cfgs[::step][:SAMPLE]


def _fake_run(path: Path, cfg: config.Config) -> None:
    """A run directory that loads: the resolved config and one logged step of zeros."""
    path.mkdir(parents=True)
    (path / rundir.CONFIG).write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    (path / rundir.SUMMARY).write_text("{}", encoding="utf-8")
    (path / rundir.TOKENIZER).write_text("{}", encoding="utf-8")
    step = {k: 0 for k in rundir.REQUIRED[rundir.METRICS]}
    (path / rundir.METRICS).write_text(json.dumps(step) + "\n", encoding="utf-8")
    batch = {"step": 0, "sentence_ids": [], "words": {}, "pieces": {}}
    (path / rundir.BATCHES).write_text(json.dumps(batch) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """Lab name -> a folder holding fake runs of that lab's recipe."""
    root = tmp_path_factory.mktemp("fakes")
    out = {}
    for name, lab in LABS.items():
        for i, cfg in enumerate(_configs(lab.FOLDER)):
            _fake_run(root / name / f"run-{i}", cfg)
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", PLUGINS)
def test_configs_load_and_the_page_has_the_blocks(name):
    plugin = PLUGINS[name]
    here = ROOT / "experiments" / plugin.FOLDER
    shipped = sorted(here.glob("*.yaml"))
    assert shipped, f"{here}: no config or sweep file"
    for path in shipped:
        if path.name == "sweep.yaml":
            assert sweep.load_spec(path).runs()
        else:
            config.load(path)
    missing = set(plugin.BLOCKS) - blocks(here / "README.md")
    assert not missing, f"{here / 'README.md'} lacks the blocks {missing}"


@pytest.mark.parametrize("name", LABS)
def test_a_lab_reads_its_own_runs_and_refuses_every_other_labs(name, fakes):
    lab = LABS[name]
    own = [SimpleNamespace(path=ROOT, config=c.to_dict()) for c in _configs(lab.FOLDER)]
    assert lab.RUNS.refusal(own) is None
    for other, folder in fakes.items():
        if other == name:
            continue
        with pytest.raises(RunDirError) as e:
            lab.report(folder)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{folder}: not the {name} lab's runs: "), msg


def test_the_phase19_table_reads_its_sweeps_and_refuses_the_labs(fakes, tmp_path):
    ex = EXERCISES["phase-19"]
    chosen = [p for p in sorted((ROOT / "experiments").glob("*/sweep.yaml"))
              if sweep.load_spec(p).report == ex.NAME]
    assert {p.parent.name for p in chosen} >= {"19-sweep", "19-sgd", "numerics"}
    for p in chosen:
        own = [SimpleNamespace(path=ROOT, config=c.to_dict()) for c in _configs(p.parent.name)]
        assert ex.RUNS.refusal(own) is None, p
    for other, lab in LABS.items():
        if not (ROOT / "experiments" / lab.FOLDER / "sweep.yaml").is_file():
            continue
        spec = sweep.load_spec(ROOT / "experiments" / lab.FOLDER / "sweep.yaml")
        if spec.report == ex.NAME:
            continue  # the SGD and numerics sweeps fill a phase-19 table too
        spec.out, spec.path = tmp_path / other, tmp_path / other / "sweep.yaml"
        for _, ov, path in spec.runs()[:SAMPLE]:
            _fake_run(path, config.load(spec.base, ov))
        with pytest.raises(RunDirError, match=f"not runs the {ex.NAME} table reads"):
            ex.report(spec)


def test_the_cli_names_the_lab_and_refuses_in_one_line(fakes, capsys):
    assert main(["report", "numerics", str(fakes["sgd-vs-adam"])]) == 2
    assert main(["report", "no-such-lab", str(fakes["sgd-vs-adam"])]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "train.dtype" in err[0] and "expected one of: " in err[1]


def test_a_sweep_names_a_report_that_exists(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("base: experiments/toy-rare-samples/config.yaml\nreport: phase-20\n")
    with pytest.raises(config.ConfigError, match=r"s.yaml: report: unknown report 'phase-20'"):
        sweep.load_spec(spec)


# what a plug-in may use of training (guards: the clip rule, which the quizzes ask about)
ALLOWED_CORE = {"rundir", "config", "optim", "restore", "guards"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


@pytest.mark.parametrize("folder", ["labs", "exercises", "reports"])
def test_plugins_import_no_training_internals(folder):
    for path in sorted((ROOT / "src/minitrain" / folder).glob("*.py")):
        core = {m.split(".")[2] for m in _imports(path)
                if m.startswith("minitrain.core.") and m.count(".") >= 2}
        assert core <= ALLOWED_CORE, f"{path.name} imports minitrain.core.{core - ALLOWED_CORE}"


def test_the_general_tools_name_no_experiment():
    """Reports and the tools read any run: no experiment, exercise or theory page named (the
    bench's models are a data file, bench/models.yaml)."""
    names = [p.name for p in (ROOT / "experiments").iterdir() if p.is_dir()]
    pattern = re.compile("|".join([*map(re.escape, names), "theory/", r"phase.?19", r"Run [AB]\b"]))
    src = ROOT / "src/minitrain"
    paths = [*sorted((src / "reports").rglob("*.py")), *sorted((src / "tools").glob("*.py")),
             src / "cli.py"]
    for path in paths:
        found = pattern.search(path.read_text(encoding="utf-8"))
        assert not found, f"{path}: names {found.group()!r}"


@pytest.mark.parametrize("name", sorted(__import__("minitrain.exercises.catalogue",
                                                    fromlist=["BREAKS"]).BREAKS))
def test_every_catalogue_exercise_loads_and_its_page_has_the_blocks(name):
    """The catalogue's exercises, walked like the labs: every config loads (through its base),
    differs from the control, and the page holds every block the sheet fills."""
    from minitrain.exercises import catalogue, sheet

    cfgs = {role: config.load(p) for role, p in catalogue.configs(ROOT, name).items()}
    assert all(c != cfgs["control"] for role, c in cfgs.items() if role != "control")
    page = catalogue.folder(ROOT, name) / "README.md"
    assert set(sheet.BLOCKS) <= blocks(page), page


def test_a_page_is_held_to_its_saved_copy(tmp_path):
    """pages --check: words must be the same (numbers masked), numbers within the tolerance
    of the machine the saved copy names (none named here: another machine's, 25%); the
    made-on block and the lines naming a commit are not compared."""
    from minitrain.reports import pages

    page = ("<!-- measured:t -->\n| a | 1.00 | 20 |\nMade by x at commit abc123.\n"
            "<!-- /measured:t -->\n<!-- measured:made-on -->\nmade on y\n"
            "<!-- /measured:made-on -->\n")
    assert pages.differences(page, page.replace("1.00", "1.2").replace("abc123", "9f"), 0.25) \
        == []
    assert pages.differences(page, page.replace("1.00", "1.4"), 0.25) == [
        "block t, line 2: 1 became 1.4"]
    assert "other words" in pages.differences(page, page.replace("| a |", "| b |"), 0.25)[0]
    assert pages.differences(page, page.replace("measured:t", "measured:u"), 0.25) == [
        "block t: only in the first", "block u: only in the second"]
    saved, now = tmp_path / "saved.md", tmp_path / "page.md"
    saved.write_text(page, encoding="utf-8")
    now.write_text(page.replace("1.00", "1.4"), encoding="utf-8")
    assert pages.main(["--check", str(saved), str(now)]) == 1
    now.write_text(page.replace("1.00", "1.1"), encoding="utf-8")
    assert pages.main(["--check", str(saved), str(now)]) == 0


def test_a_block_names_one_commit_from_any_folder(tmp_path):
    """The commit a block names, '+' when the sources have changes, is the same asked from
    any folder of the checkout (a sweep asks from its spec's folder)."""
    import subprocess

    from minitrain.reports import pages

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "experiments/sweep").mkdir(parents=True)
    (tmp_path / "src/a.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "a")
    clean = pages.commit(tmp_path)
    assert pages.commit(tmp_path / "experiments/sweep") == clean and not clean.endswith("+")
    (tmp_path / "src/a.py").write_text("x = 2\n")
    assert pages.commit(tmp_path / "experiments/sweep") == clean + "+" == pages.commit(tmp_path)
