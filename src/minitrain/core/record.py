"""The per-step record the loop hands to its observers, and the observer interface. The
record is complete when observers see it: none of them writes into it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minitrain.core.data import Batch
from minitrain.core.optim import StepStats


@dataclass(frozen=True)
class StepRecord:
    step: int
    lr: float
    loss: float  # mean over the batch's scored tokens
    stats: StepStats
    batch: Batch
    token_loss: torch.Tensor  # (B, T), 0 at padding
    n_tokens: int  # scored tokens in the batch
    step_ms: float
    loss_scale: float | None = None  # fp16 runs: the loss scale this step used
    train_loss: float | None = None  # whole training set, when evaluated this step
    val_loss: float | None = None  # the held-out set, on the same steps
    train_loss_rare: float | None = None  # the training set's tracked sentences alone...
    train_loss_common: float | None = None  # ...and the others (runs with tracked words)


class Observer:
    """Sees each step's record after the step; owns the files it writes."""

    def on_step(self, r: StepRecord) -> None: ...

    def close(self) -> None: ...


class Writer(Observer):
    """An observer that only writes its file: what it needs of the live model or optimizer
    (which the next step changes) it takes in `capture`, right after the step; `write` does
    the rest (reading back, encoding, writing), in step order, once the step's whole-set
    losses are in (they may come from the eval thread, core/background.py). Alone, `on_step`
    does both."""

    def capture(self, r):
        return None

    def write(self, r, captured) -> None:
        self.on_step(r)

    def on_step(self, r):
        self.write(r, self.capture(r))
