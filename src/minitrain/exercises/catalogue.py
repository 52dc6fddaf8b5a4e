"""The break/fix catalogue: one engineered failure per exercise, each a folder under
experiments/ holding `break.yaml` (and `fix.yaml` where the fix is not simply the control),
both the healthy control (experiments/healthy/config.yaml) with one change, and a page whose
measured blocks `minitrain exercise run NAME` fills from its runs (exercises/sheet.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minitrain.core import rundir

HEALTHY = "healthy"  # experiments/healthy/: the control every break is measured against
COURSE = ("bad-init", "no-warmup", "causal-leak")  # the course's break-it lab: the blind default


@dataclass(frozen=True)
class Break:
    name: str  # its folder under experiments/, and the cause diagnose names for it
    what: str  # one line: what it breaks (its page has the keys, the code edit and the fix)


BREAKS = {b.name: b for b in (
    Break("bad-init", "every weight initialised 100x too large (std 0.02 -> 2.0)"),
    Break("no-warmup", "a 5x peak lr (0.03) from step 0, with no warm-up"),
    Break("causal-leak", "attention may look at later tokens (the causal mask removed)"),
    Break("lr-too-high", "a 10x peak lr (0.06), warm-up kept"),
    Break("lr-schedule", "the cosine decays to 0 over a tenth of the run (step 130 of 1300)"),
)}


def folder(root: Path, name: str) -> Path:
    return root / "experiments" / name


def configs(root: Path, name: str) -> dict[str, Path]:
    """The runs of one exercise, by role: control, break and (where it has one) fix."""
    out = {"control": folder(root, HEALTHY) / "config.yaml",
           "break": folder(root, name) / "break.yaml"}
    fix = folder(root, name) / "fix.yaml"
    if fix.is_file():  # else the fix is the control
        out["fix"] = fix
    return out


def run_dirs(root: Path, name: str) -> dict[str, Path]:
    """Where each role's run directory is: the control beside its config, the others in a
    folder of the role's name inside the exercise's."""
    return {role: (folder(root, HEALTHY) if role == "control" else folder(root, name) / role)
            for role in configs(root, name)}


def ran_minutes(root: Path, name: str) -> float | None:
    """Minutes the exercise's runs took when last trained here (None: not trained yet)."""
    total = 0.0
    for path in run_dirs(root, name).values():
        try:
            total += rundir.load_run(path).summary.get("wall_s") or 0.0
        except rundir.RunDirError:
            return None
    return total / 60
