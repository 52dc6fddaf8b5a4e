"""What every lab report shares: the runs it reads (and the refusal of any others), a run's clip
label, and the one-column-per-run block most labs publish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minitrain.core.rundir import Run, RunDirError, load_run
from minitrain.reports.pages import table, update_page


def setting(run: Run, key: str):
    """The run's config value at a dotted key; None when an older run has no such key."""
    value = run.config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@dataclass(frozen=True)
class Runs:
    """The runs a lab reads: every run's data and model kind, and what must hold across them
    so that another lab's runs (often of the same kind) are refused rather than misread."""
    data: str
    model: str
    differ: tuple[str, ...] = ()  # at least one of these config keys takes two values or more
    same: tuple[str, ...] = ()  # every run has one value of each of these
    one: bool = False  # a single run directory
    arrival: bool | None = None  # True: the rare data arrives within every run; False: in none

    def load(self, folder: str | Path, lab: str) -> list[Run]:
        """Every run directory inside `folder` (at any depth), by path; RunDirError naming the
        folder and the lab when they are not this lab's runs."""
        folder = Path(folder)
        if not folder.is_dir():
            raise RunDirError(f"{folder}: no such folder of runs")
        runs = [load_run(p.parent) for p in sorted(folder.rglob("summary.json"))]
        if not runs:
            raise RunDirError(f"{folder}: holds no run directories")
        why = self.refusal(runs)
        if why:
            raise RunDirError(f"{folder}: not the {lab} lab's runs: {why}")
        return runs

    def refusal(self, runs: list[Run]) -> str | None:
        """Why these runs are not this lab's; None when they are."""
        for run in runs:
            kinds = run.config["data"].get("kind", "corpus"), run.config["model"].get("kind", "gpt")
            if kinds != (self.data, self.model):
                return f"{run.path} is a {kinds[0]}/{kinds[1]} run; this lab reads " \
                       f"{self.data}/{self.model} runs"
        if self.one and len(runs) != 1:
            return f"{len(runs)} run directories, and this lab reads one"
        if self.differ and all(len({repr(setting(r, k)) for r in runs}) < 2
                               for k in self.differ):
            return f"every run has the same {' and '.join(self.differ)}, and this lab " \
                   f"compares runs that differ in {'it' if len(self.differ) == 1 else 'one'}"
        for key in self.same:
            if len({repr(setting(r, key)) for r in runs}) > 1:
                return f"the runs differ in {key}, and this lab reads runs that share it"
        if self.arrival is not None:
            for run in runs:
                step = setting(run, "data.arrive_step")
                within = step is not None and step < run.config["train"]["steps"] and \
                    str(setting(run, "data.sampler")).startswith("arrival")
                if within != self.arrival:
                    return f"{run.path} has {'no' if self.arrival else 'its'} arrival of " \
                           f"the rare data within its steps, and this lab reads runs with " \
                           f"{'one' if self.arrival else 'none'}"
        return None


def clip_label(run: Run) -> str:
    c = run.config["optimizer"]["grad_clip"]
    return "no clip" if c is None else f"clip {c:g}"


def publish(rows: list[dict], intro: str, key: str, page=None, hide=("run",)) -> str:
    """One column per run (named by its "run" field), one row per measure; the intro above it;
    into the page's `<!-- measured:KEY -->` block when a page is given; printed."""
    keys = [k for k in rows[0] if k not in hide]
    text = intro + "\n\n" + table(["", *(r["run"] for r in rows)],
                                  [[k, *(r[k] for r in rows)] for k in keys]) + "\n"
    if page:
        update_page(page, key, text)
    print(text)
    return text
