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
    what: str  # one line: what it breaks
    keys: str  # the config keys its break.yaml sets
    edit: str  # the one-line code change the keys stand for
    fix: str  # what repairs it
    has_fix: bool = False  # a fix.yaml beside break.yaml (else the fix is the control)


BREAKS = {b.name: b for b in (
    Break("bad-init", "every weight initialised 100x too large (std 0.02 -> 2.0)",
          "model.init_std: 2.0",
          "core/model.py, GPT._init: `nn.init.normal_(m.weight, mean=0.0, std=2.0)`",
          "GPT-2's std 0.02 (the control)"),
    Break("no-warmup", "a 5x peak lr (0.03) from step 0, with no warm-up",
          "optimizer.lr: 0.03, optimizer.warmup_steps: 0",
          "core/optim.py, lr_at: `return peak` (the warm-up branch deleted)",
          "a 50-step warm-up to the same lr (fix.yaml)", has_fix=True),
    Break("causal-leak", "attention may look at later tokens (the causal mask removed)",
          "model.causal: false",
          "core/model.py, CausalSelfAttention.forward: "
          "`F.scaled_dot_product_attention(q, k, v, is_causal=False)`",
          "the causal mask (the control)"),
    Break("lr-too-high", "a 10x peak lr (0.06), warm-up kept",
          "optimizer.lr: 0.06", "the config: `lr: 0.06`", "lr 0.006 (the control)"),
    Break("lr-schedule", "the cosine decays to 0 over a tenth of the run (step 130 of 1300)",
          "optimizer.min_lr_ratio: 0.0, optimizer.decay_steps: 130",
          "loop.py, Loop.step: `lr_at(step, o.lr, o.warmup_steps, self.cfg.train.steps // 10, "
          "o.min_lr_ratio)`", "the same cosine over the run's length (fix.yaml)",
          has_fix=True),
)}


def folder(root: Path, name: str) -> Path:
    return root / "experiments" / name


def configs(root: Path, name: str) -> dict[str, Path]:
    """The runs of one exercise, by role: control, break and (where it has one) fix."""
    b = BREAKS[name]
    out = {"control": folder(root, HEALTHY) / "config.yaml",
           "break": folder(root, name) / "break.yaml"}
    if b.has_fix:
        out["fix"] = folder(root, name) / "fix.yaml"
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
