"""The labs: one module each, reading the run directories its recipe wrote, drawing its
pictures and filling the `measured` blocks of its page. Nothing here trains.

Every lab module has NAME (`minitrain report NAME`), FOLDER (experiments/FOLDER/ holds its
configs and README.md page), BLOCKS (the measured blocks it fills), RUNS (common.Runs: the runs
it reads, and the refusal of any others) and `report(folder, page=None) -> dict` returning
{"blocks": {block: text}, "measured": its numbers}. A new lab is a module and a line below."""

from __future__ import annotations

from importlib import import_module

LABS = {lab.NAME: lab for lab in (import_module(f"minitrain.labs.{name}") for name in (
    "toy_rare_samples",
    "tabular_classifier",
    "clip_geometry",
    "depth_explosion",
    "sgd_vs_adam",
    "warmup_bound",
    "numerics",
    "source_shifts",
    "capacity",
))}
