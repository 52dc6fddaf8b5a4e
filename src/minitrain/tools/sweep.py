"""`minitrain sweep SPEC`: one base config over many seeds and settings, in parallel
processes, resumable; the runs are read back by the report the spec names, if any.

A spec (YAML) names a base config and any of: seeds, overrides for every run (`set`), cells
(label -> overrides), a grid (key -> values, every combination) and `report`, the name of the
exercise (minitrain.exercises) whose table reads the runs back into a page's measured block
(`block`, default `sweep`). Runs go to
OUT/<cell>/<grid point>/seed-<n>/, ordinary run directories (a level is left out when the
spec has no cells, grid or seeds). A run whose directory already holds a completed run of the
same resolved config is not run again, so an interrupted sweep goes on where it stopped.
With `branch_from: <cell>`, the runs of the other cells start from that cell's checkpoint
(same seed and grid point) where minitrain.tools.branch proves it changes nothing, and train from
scratch where it cannot; the log says which, and why. A cell's value `@suggested_clip`
(`optimizer.grad_clip=@suggested_clip`) is read from that source run: the clip
`minitrain diagnose` suggests from its norms before the cell's `optimizer.clip_from_step`, so
each seed is guarded at its own run's suggestion.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import yaml

from minitrain.core import config as config_mod
from minitrain.core import rundir
from minitrain.core.config import ConfigError

SUGGESTED = "@suggested_clip"  # a value read from the cell's source run (resolve)
STAND_IN = "1.0"  # the value validation and ordering see before the source is trained


@dataclass
class Spec:
    path: Path
    base: Path
    seeds: list[int] | None  # None: the base config's own seed
    common: list[str]
    cells: dict[str, list[str]]  # label -> overrides
    grid: list[tuple[str, list]]  # (key, values): every combination, within every cell
    jobs: int  # 1: in this process
    out: Path
    report: str | None = None  # the exercise whose table reads the runs (EXERCISES)
    branch_from: str | None = None  # a cell whose runs the others may branch from
    block: str = "sweep"  # the measured block of a page that the report fills

    def runs(self) -> list[tuple[str, list[str], Path]]:
        """(cell label, overrides, run directory) for every run, in order."""
        return [run[:3] for run in self._layout()]

    def sources(self) -> dict[Path, Path]:
        """run directory -> the run of the `branch_from` cell it may branch from (same grid
        point, same seed), for the runs of every other cell."""
        return {path: src for _, _, path, src in self._layout() if src is not None}

    def _layout(self) -> list[tuple[str, list[str], Path, Path | None]]:
        out = []
        points = list(itertools.product(*(vs for _, vs in self.grid)))
        for label, sets in self.cells.items():
            for values in points:
                point = [f"{k}={_yaml(v)}" for (k, _), v in zip(self.grid, values)]
                name = "_".join(f"{k.split('.')[-1]}={_yaml(v)}"
                                for (k, _), v in zip(self.grid, values))
                where = self.out / slug(label) if label else self.out
                where = where / name if name else where
                full = f"{label} {name}".strip() or "run"
                for seed in self.seeds or [None]:
                    seed_set = [] if seed is None else [f"seed={seed}"]
                    path = where / f"seed-{seed}" if seed is not None else where
                    src = None
                    if self.branch_from is not None and label != self.branch_from:
                        src = self.out / slug(self.branch_from) / path.relative_to(
                            self.out / slug(label))
                    out.append((full, [*self.common, *sets, *point, *seed_set], path, src))
        return out


def _suggesting(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[-1].strip() == SUGGESTED for o in overrides)


def _fill(overrides: list[str], value: str) -> list[str]:
    return [o.split("=", 1)[0] + "=" + value if o.split("=", 1)[-1].strip() == SUGGESTED
            else o for o in overrides]


def stand_in(overrides: list[str]) -> list[str]:
    """The overrides with STAND_IN for each @suggested_clip: what a run's config is, but for
    that number (its seed, its branch, its validity)."""
    return _fill(overrides, STAND_IN)


def resolve(base: Path, overrides: list[str], source: Path) -> list[str]:
    """The overrides with each @suggested_clip made the number the clip rule of
    `minitrain diagnose` (reports.measure.suggest_clip) gives on the source run's pre-clip
    norms before the run's optimizer.clip_from_step (its whole log when that is 0). load_spec
    has made sure every such run has a source."""
    if not _suggesting(overrides):
        return overrides
    from minitrain.reports.measure import suggest_clip

    try:
        run = rundir.load_run(source)
    except rundir.RunDirError as e:
        raise ConfigError(f"{SUGGESTED}: the source run is not readable: {e}") from None
    step = config_mod.load(base, stand_in(overrides)).optimizer.clip_from_step or None
    value = suggest_clip(run, step)
    if value is None:
        raise ConfigError(f"{SUGGESTED}: {source} has fewer than 10 norms before step {step}")
    return _fill(overrides, repr(value))


def _config(spec: Spec, overrides: list[str], source: Path | None):
    """A run's config: its suggested clip resolved when its source is trained, else STAND_IN
    (such a run is then not done, and trains once its source has)."""
    if _suggesting(overrides) and source is not None and (source / rundir.SUMMARY).exists():
        try:
            return config_mod.load(spec.base, resolve(spec.base, overrides, source))
        except ConfigError:
            pass
    return config_mod.load(spec.base, stand_in(overrides))


def _yaml(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such sweep file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None

    def bad(key, what):
        return ConfigError(f"{path}: {key}: {what}")

    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping")
    known = {"base", "seeds", "set", "cells", "grid", "jobs", "out", "report", "branch_from",
             "block"}
    for key in raw:
        if key not in known:
            raise bad(key, f"unknown key (expected one of: {', '.join(sorted(known))})")
    seeds = raw.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0:
        seeds = list(range(seeds))
    if seeds is not None and not (isinstance(seeds, list) and seeds and all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise bad("seeds", "expected a positive count or a list of integers")
    cells = raw.get("cells", {"": []})
    if not isinstance(cells, dict) or not cells:
        raise bad("cells", "expected a mapping of label -> list of key=value overrides")
    grid = raw.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise bad("grid", "expected a mapping of key -> non-empty list of values")
    for label, sets in cells.items():
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            raise bad(f"cells.{label}", "expected a list of key=value strings")
    common = raw.get("set", [])
    if not isinstance(common, list) or not all(isinstance(s, str) for s in common):
        raise bad("set", "expected a list of key=value strings")
    jobs = raw.get("jobs", 2)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise bad("jobs", "expected a positive integer")
    if not isinstance(raw.get("base"), str):
        raise bad("base", "expected the path of a run config")
    report = raw.get("report")
    if report is not None:
        from minitrain.exercises import EXERCISES

        if report not in EXERCISES:
            raise bad("report", f"unknown report {report!r} (expected one of: "
                      f"{', '.join(EXERCISES)})")
    branch_from = raw.get("branch_from")
    if branch_from is not None and (not isinstance(branch_from, str) or branch_from not in cells):
        raise bad("branch_from", "expected the label of one of the cells")
    block = raw.get("block", "sweep")
    if not (isinstance(block, str) and re.fullmatch(r"[\w.-]+", block)):
        raise bad("block", "expected a block name (letters, digits, '.', '-', '_')")
    spec = Spec(path, Path(raw["base"]), seeds, common,
                {str(k) if k is not None else "": v for k, v in cells.items()},
                [(str(k), v) for k, v in grid.items()], jobs,
                Path(raw.get("out", path.parent / "runs")), report, branch_from, block)
    for label, overrides, path in spec.runs():  # every run's config is validated first
        config_mod.load(spec.base, stand_in(overrides))
        if _suggesting(overrides) and path not in spec.sources():
            raise bad(f"cells.{label}", f"{SUGGESTED} is read from the branch_from cell's "
                      "runs: it needs branch_from, and cannot be in that cell")
    return spec


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")


def done_before(out: Path, cfg) -> bool:
    """A completed run of this config is already there (compared as values, so a run written
    before the config gained a key, which then reads as its default, still counts)."""
    try:
        summary = json.loads((out / rundir.SUMMARY).read_text(encoding="utf-8"))
        raw = yaml.safe_load((out / rundir.CONFIG).read_text(encoding="utf-8"))
        same = config_mod.from_dict(raw).to_dict() == cfg.to_dict()
    except (OSError, ValueError, AttributeError, TypeError, yaml.YAMLError):
        return False
    return same and summary.get("status") in ("completed", "diverged")


def _train_one(base: str, overrides: list[str], out: str, source: str | None = None
               ) -> tuple[str, str]:
    """Train one run, branched from `source` when that is proved to change nothing (see
    minitrain.tools.branch), else from scratch. Returns (status, how it started)."""
    from minitrain.tools.branch import train_from

    summary, how = train_from(source, config_mod.load(base, overrides), Path(out), replace=True)
    return summary["status"], how


def _ignore_sigint():  # workers finish their run; the parent decides when to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _order(spec: Spec, todo: list[tuple[list[str], Path]]):
    """The runs to train now (the branch sources first, so their dependants start early) and,
    per source still to be trained, the runs that wait for it. A run whose config alone rules
    out branching does not wait."""
    from minitrain.tools.branch import config_gap

    sources = spec.sources()
    overrides = {path: ov for _, ov, path in spec.runs()}
    pending = {out for _, out in todo}
    waiting, jobs = {}, {}
    for ov, out in todo:
        src = sources.get(out)
        if src is not None and not _suggesting(ov) and config_gap(
                config_mod.load(spec.base, overrides[src]), config_mod.load(spec.base, ov)
        ) is not None:
            src = None  # a suggested clip waits for its source, branched or not
        jobs[out] = (ov, out, src)
        if src in pending:
            waiting.setdefault(src, []).append(jobs[out])
    first = [jobs[out] for _, out in todo if out in waiting]
    now = first + [j for j in jobs.values() if j not in first and j[2] not in pending]
    return now, waiting


def run(spec: Spec, log=print, force: bool = False) -> dict[str, int]:
    """Train every run of the spec not already done (all of them with `force`). Returns
    counts by outcome."""
    runs, sources = spec.runs(), spec.sources()
    todo = [(ov, out) for _, ov, out in runs
            if force or not done_before(out, _config(spec, ov, sources.get(out)))]
    counts = {"already done": len(runs) - len(todo)}
    log(f"{spec.path}: {len(runs)} runs, {counts['already done']} already done, "
        f"{len(todo)} to run on {spec.jobs} process{'es' * (spec.jobs > 1)}")
    now, waiting = _order(spec, todo)
    finished = 0

    def record(out, result):
        nonlocal finished
        status, how = result
        finished += 1
        counts[status] = counts.get(status, 0) + 1
        if how.startswith("branched"):
            counts["branched"] = counts.get("branched", 0) + 1
        log(f"[{finished}/{len(todo)}] {out}: {status}" + (f" ({how})" if how else ""))
        return waiting.pop(out, [])

    def args(job):
        ov, out, src = job
        ov = resolve(spec.base, ov, sources.get(out))  # its source is trained by now
        return str(spec.base), ov, str(out), None if src is None else str(src)

    if spec.jobs == 1:  # small runs: no process start-up, no pool
        queue = list(now)
        while queue:
            job = queue.pop(0)
            queue += record(job[1], _train_one(*args(job)))
        return counts
    import multiprocessing as mp

    pool = ProcessPoolExecutor(spec.jobs, mp_context=mp.get_context("spawn"),
                               initializer=_ignore_sigint)
    futures = {pool.submit(_train_one, *args(job)): job[1] for job in now}
    try:
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                for job in record(futures.pop(fut), fut.result()):
                    futures[pool.submit(_train_one, *args(job))] = job[1]
    except KeyboardInterrupt:
        log("interrupted: runs in progress finish first; rerun the sweep to go on")
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return counts
