"""`minitrain sweep`: one config run over a grid of `--set` values, in one process (a small
lab's dozens of runs would otherwise spend most of their time starting Python)."""

from __future__ import annotations

import itertools
from pathlib import Path

from minitrain import config
from minitrain.config import ConfigError


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """["optimizer.grad_clip=null,1.0", ...] -> [("optimizer.grad_clip", ["null", "1.0"]), ...]"""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,...")
        grid.append((key, [v.strip() for v in values.split(",")]))
    return grid


def plan(path: str | Path, grid: list[tuple[str, list[str]]],
         overrides: list[str] = ()) -> list[tuple[str, config.Config]]:
    """(run name, validated config) for every combination; all are checked before any runs.
    The name is `key=value` for each grid key (its last dotted part), joined by `_`."""
    out = []
    for values in itertools.product(*(vs for _, vs in grid)):
        sets = [f"{k}={v}" for (k, _), v in zip(grid, values)]
        name = "_".join(f"{k.split('.')[-1]}={v}" for (k, _), v in zip(grid, values)) or "run"
        out.append((name, config.load(path, [*overrides, *sets])))
    return out


def sweep(path: str | Path, out: str | Path, grid_items: list[str], overrides: list[str] = (),
          replace: bool = False, progress: bool = False) -> list[dict]:
    from minitrain.train import train

    runs = plan(path, parse_grid(grid_items), overrides)
    summaries = []
    for name, cfg in runs:
        summary = train(cfg, Path(out) / name, progress=progress, replace=replace)
        print(f"{Path(out) / name}: {summary['status']} after {summary['steps_completed']} "
              f"steps, {summary['wall_s']} s")
        summaries.append(summary)
    return summaries
