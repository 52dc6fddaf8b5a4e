"""Checkpoints: everything a run needs to go on exactly where it stopped (model, Adam's
moments, the sampler's position and generator, the whole-set evaluator's memory), as tensors
and plain data only, so loading one never runs code (torch.load(weights_only=True)).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from minitrain.core import logs, rundir

FILE = rundir.CHECKPOINT
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def save(out: Path, step: int, parts: dict) -> None:
    """Write the state after `step` steps (temp file + rename: never half-written)."""
    write(out, {"format": FORMAT, "step": step,
                **{name: p.state_dict() for name, p in parts.items()}})


def write(out: Path, state: dict) -> None:
    tmp = out / (FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / FILE)


def read(out: Path) -> dict:
    """The run's checkpoint as saved: tensors and plain data only; loading runs no code."""
    path = out / FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        # on the CPU whatever device wrote it; load_state_dict copies onto this run's device
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike: a file we will not use
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a minitrain checkpoint ({first[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a minitrain checkpoint (format {FORMAT})")
    return state


def load(out: Path, parts: dict) -> int:
    """Restore `parts` from the run's checkpoint; returns the number of steps it holds."""
    state = read(out)
    try:
        for name, part in parts.items():
            part.load_state_dict(state[name])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{out / FILE}: does not fit this run ({str(e)[:120]})") from None
    return int(state["step"])


def trim_logs(out: Path, steps: int) -> None:
    """Drop log records of steps at or after `steps` (written after the checkpoint by a run
    that was then killed): the resumed run writes them again, identically."""
    for kind in logs.LOGS:
        path = out / kind.name
        if not path.exists():  # not logged by this run's kind or extra_logs
            continue
        if kind.trim == "lines":
            keep = rundir.read_jsonl(path)[:steps]
            if len(keep) < steps:
                raise CheckpointError(f"{path}: holds {len(keep)} steps, the checkpoint {steps}")
            _replace(path, "".join(
                path.read_text(encoding="utf-8").splitlines(keepends=True)[:steps]))
        elif kind.trim == "step":
            keep = [r for r in rundir.read_jsonl(path) if logs.record_step(kind, r) < steps]
            _replace(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in keep))
        else:
            _trim_token_losses(path, steps)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _trim_token_losses(path: Path, steps: int) -> None:
    records = rundir.read_token_losses(path)
    n = int(np.searchsorted(records["step"], steps))  # records are in step order
    with open(path, "r+b") as f:
        f.truncate(n * rundir.TOKEN_LOSS_DTYPE.itemsize)
