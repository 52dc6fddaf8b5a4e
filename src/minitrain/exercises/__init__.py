"""The break/fix exercises: one module each, holding the tables that belong to its experiment
(experiments/FOLDER/), chosen by name from a sweep file's `report:` key.

Every exercise module has NAME, FOLDER (its page is experiments/FOLDER/README.md), BLOCKS (the
measured blocks it fills), RUNS (labs.common.Runs: the runs it reads) and
`report(spec, page=()) -> dict` for a loaded sweep file, returning {"blocks": {block: text},
"measured": its numbers, "files": {what: path}}. A new exercise is a module and a line below."""

from __future__ import annotations

from importlib import import_module

EXERCISES = {ex.NAME: ex for ex in (import_module(f"minitrain.exercises.{name}") for name in (
    "phase19", "handout_batches",
))}
