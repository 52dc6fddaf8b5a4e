"""`minitrain exercise ...`: the break/fix catalogue (minitrain.exercises.catalogue) as
commands: list the exercises, train one and fill its page, and the blind round: breaks trained
into numbered folders in a seeded shuffle, diagnosed by the learner, scored, revealed.

A blind folder holds a run directory whose `config.resolved.yaml` is the reference's (the
untouched control's): its logs, checkpoint and dashboard are the only evidence. What is needed
to reveal and score is one file, DIR/SEALED, base64 so that a glance or a grep does not give
it away."""

from __future__ import annotations

import base64
import json
import random
import shutil
from pathlib import Path

import yaml

from minitrain.core import config, rundir
from minitrain.core.config import ConfigError
from minitrain.core.rundir import RunDirError
from minitrain.exercises import catalogue
from minitrain.exercises.catalogue import BREAKS, COURSE, HEALTHY

SEALED = "SEALED"  # the answers; the learner does not open it
ANSWERS = "diagnoses.yaml"  # the learner's: `01: CAUSE`, or `01: {cause: CAUSE, notes: ...}`
REFERENCE = "reference"


def _train(path: Path, out: Path, overrides: list[str], progress: bool = False,
           again: bool = True) -> dict:
    """Train one run; unless `again`, keep a completed run of the same config that is there."""
    from minitrain.core.train import train
    from minitrain.tools.sweep import done_before

    cfg = config.load(path, overrides)
    if not again and done_before(out, cfg):
        return {**rundir.load_run(out).summary, "kept": True}
    return train(cfg, out, progress=progress, replace=True)


def listing(root: Path) -> list[str]:
    """One line per exercise: name, what it breaks, minutes its runs took here."""
    lines = []
    for name, b in BREAKS.items():
        took = catalogue.ran_minutes(root, name)
        when = "not run here yet" if took is None else f"ran in {took:.1f} min here"
        lines.append(f"{name:<12} {b.what} ({when})")
    return lines


def run(root: Path, name: str, overrides: list[str] = (), progress: bool = True,
        force: bool = False) -> dict:
    """Train the exercise's control, break and fix into their folders (a completed run of the
    same config already there is kept, unless `force`: the control serves every exercise)."""
    if name not in BREAKS:
        raise ConfigError(f"exercise: unknown exercise {name!r} (expected one of: "
                          f"{', '.join(BREAKS)})")
    done = {}
    for role, path in catalogue.configs(root, name).items():
        out = catalogue.run_dirs(root, name)[role]
        done[role] = _train(path, out, list(overrides), progress, again=force)
        how = "kept: already trained" if done[role].get("kept") else \
            f"{done[role]['wall_s']:.0f} s"
        print(f"{name} {role}: {out} ({done[role]['status']}, {how})")
    return done


def chosen(breaks: str | None) -> list[str]:
    names = list(COURSE) if not breaks else \
        list(BREAKS) if breaks == "all" else [b.strip() for b in breaks.split(",") if b.strip()]
    unknown = [n for n in names if n not in BREAKS]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(f"--breaks: expected distinct names from {', '.join(BREAKS)} or "
                          f"'all', got {breaks!r}")
    return names


def blind(root: Path, out: Path, seed: int, breaks: str | None = None,
          steps: int | None = None, progress: bool = False, dashboards: bool = True) -> dict:
    """Train the chosen breaks into out/01, out/02, ... in an order shuffled by `seed`, and
    the untouched control into out/reference, every run at training seed `seed`."""
    names = chosen(breaks)
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out}: not empty; a blind round goes into a new folder")
    order = random.Random(seed).sample(names, len(names))
    overrides = [f"seed={seed}"] + ([f"train.steps={steps}"] if steps else [])
    reference = out / REFERENCE
    ref_cfg = catalogue.folder(root, HEALTHY) / "config.yaml"
    _train(ref_cfg, reference, overrides, progress)
    mapping, configs = {}, {}
    for i, name in enumerate(order, 1):
        label = f"{i:02d}"
        run_dir = out / label
        _train(catalogue.configs(root, name)["break"], run_dir, overrides, progress)
        configs[label] = (run_dir / rundir.CONFIG).read_text(encoding="utf-8")
        shutil.copyfile(reference / rundir.CONFIG, run_dir / rundir.CONFIG)  # no break values
        mapping[label] = name
    sealed = {"seed": seed, "steps": steps, "mapping": mapping, "configs": configs}
    (out / SEALED).write_bytes(base64.b64encode(json.dumps(sealed).encode()) + b"\n")
    if dashboards:
        _dashboards(out, [*mapping, REFERENCE])
    (out / ANSWERS).write_text("".join(f"{label}: \n" for label in mapping), encoding="utf-8")
    return sealed


def _dashboards(out: Path, labels: list[str]) -> None:
    from minitrain.reports import dashboard

    for label in labels:
        dashboard.write([out / label], out / label / "dashboard.html", blind=True)


def sealed(out: Path) -> dict:
    try:
        return json.loads(base64.b64decode((out / SEALED).read_bytes()))
    except FileNotFoundError:
        raise RunDirError(f"{out}: no {SEALED} file; not a blind round") from None
    except ValueError:
        raise RunDirError(f"{out / SEALED}: damaged; not written by exercise blind") from None


def reveal(out: Path) -> dict[str, str]:
    return sealed(out)["mapping"]


def answers(out: Path, labels: list[str]) -> dict[str, dict]:
    """The learner's diagnoses: label -> {"cause": name or None, "notes": text}."""
    path = out / ANSWERS
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RunDirError(f"{path}: write your diagnoses here first (01: CAUSE, one line "
                          "per folder)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected one line per folder, like `01: CAUSE`")
    raw = {(f"{k:02d}" if isinstance(k, int) else str(k)): v for k, v in raw.items()}
    out_ = {}
    for label in labels:
        v = raw.get(label)
        if isinstance(v, dict):
            out_[label] = {"cause": v.get("cause"), "notes": v.get("notes", "")}
        else:
            out_[label] = {"cause": v, "notes": ""}
    return out_


def score(out: Path) -> dict:
    """Per folder: the learner's cause, the truth, right or wrong, diagnose's evidence."""
    from minitrain.exercises.causes import diagnose

    mapping = reveal(out)
    given = answers(out, list(mapping))
    rows = []
    for label, truth in mapping.items():
        d = diagnose(out / label)["cause"]
        cause = given[label]["cause"]
        rows.append({"folder": label, "answer": cause, "truth": truth,
                     "right": str(cause).strip() == truth, "diagnose": d["name"],
                     "evidence": d["evidence"]})
    return {"rows": rows, "right": sum(r["right"] for r in rows), "n": len(rows)}


def print_score(result: dict) -> None:
    for r in result["rows"]:
        mark = "right" if r["right"] else "wrong"
        print(f"{r['folder']}: {mark} (you: {r['answer'] or '-'}; it was: {r['truth']})")
        for line in r["evidence"]:
            print(f"    {line}")
    print(f"score: {result['right']}/{result['n']}")


def self_answer(out: Path) -> None:
    """Write diagnose's own causes as the answers (how the tests and `--self` score it)."""
    from minitrain.exercises.causes import diagnose

    labels = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != REFERENCE)
    text = "".join(f"{label}: {diagnose(out / label)['cause']['name']}\n" for label in labels)
    (out / ANSWERS).write_text(text, encoding="utf-8")
