"""Whole-set losses: the training and held-out sets cut into length-sorted chunks once, and
the evaluator that decides on which steps they are measured."""

from __future__ import annotations

import copy
import statistics
from collections import deque

import torch

from minitrain.core.data import IGNORE, Batch
from minitrain.core.model import token_losses


def length_chunks(x: torch.Tensor, y: torch.Tensor, chunk: int = 64, rows_out=None
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A whole set cut for evaluation: rows sorted by their last scored position, in chunks of
    `chunk`, each cut to its own longest row. Token sequences only (x integer, x and y (N, T));
    the models here are causal or per-position, so what follows a row's last scored position
    cannot change its losses, and a chunk of short rows costs what short rows cost. Each
    chunk's row indices are appended to `rows_out` when given."""
    if x.is_floating_point() or x.dim() != 2 or x.shape != y.shape:
        order = torch.arange(len(x))
        out = [(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk)]
    else:
        scored = y != IGNORE
        pos = torch.arange(1, y.shape[1] + 1, device=y.device)
        ends = (scored * pos).amax(dim=1)  # 1 + last scored position; 0 for a row with none
        order = torch.argsort(ends, stable=True)
        out = []
        for i in range(0, len(order), chunk):
            rows = order[i:i + chunk]
            T = max(1, int(ends[rows].max()))
            out.append((x[rows, :T], y[rows, :T]))
    if rows_out is not None:
        rows_out += [order[i:i + chunk].cpu() for i in range(0, len(order), chunk)]
    return out


def bounded(sets: dict, max_rows: int, seed: int) -> tuple[dict, dict]:
    """Each set as it is, or above `max_rows` examples a fixed, seeded subset of that many
    (rows in their order), so that evaluating a long corpus costs what `max_rows` cost.
    Returns the sets and, per cut set, {"rows": kept, "of": all, "seed": seed}."""
    out, shares = {}, {}
    for field, b in sets.items():
        n = len(b.x)
        if not max_rows or n <= max_rows:
            out[field] = b
            continue
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_rows]
        keep = keep.sort().values
        ids = [b.sentence_ids[i] for i in keep.tolist()]
        out[field] = Batch(ids, b.x[keep], b.y[keep])
        shares[field] = {"rows": max_rows, "of": n, "seed": seed}
    return out, shares


@torch.inference_mode()
def split_losses(model, chunks: list, masks: list[torch.Tensor] | None = None
                 ) -> tuple[float, float, float]:
    """Mean token loss over a whole set given as `length_chunks` and, with `masks` (one bool
    tensor per chunk, over its rows), over the rows where it is true and over the others: one
    forward pass serves all three (nan for the parts without masks)."""
    total = count = 0
    part = {True: [0.0, 0], False: [0.0, 0]}
    for i, (x, y) in enumerate(chunks):
        tl = token_losses(model(x), y, IGNORE)
        scored = y != IGNORE
        total += float(tl.sum())
        count += int(scored.sum())
        if masks is not None:
            for side, rows in ((True, masks[i]), (False, ~masks[i])):
                part[side][0] += float(tl[rows].sum())
                part[side][1] += int(scored[rows].sum())
    mean = {side: s / n if n else float("nan") for side, (s, n) in part.items()}
    return total / count, mean[True], mean[False]


def mean_loss(model, chunks: list) -> float:
    """Mean token loss over a whole set given as `length_chunks`."""
    return split_losses(model, chunks)[0]


class WholeSetLoss:
    """The whole-set losses (train_loss, val_loss) of a step, when it is due: every `every`
    steps, at the last step, and for `dense` steps after the pre-clip norm jumps past `jump` x
    its recent median (or from `dense_at`, the arrival of an arrival sampler, so that runs with
    and without a spike there are measured on the same steps) at each step divisible by
    `dense_every` (1: all of them), so the whole-set curve around a spike is complete.
    `rare`: a bool per row of a set ({"train_loss": mask}): that set's loss is also measured
    over those rows (`train_loss_rare`) and the others (`train_loss_common`), since a whole-set
    rise mixes learning the rare sentences with forgetting the rest."""

    def __init__(self, model, sets, total_steps, every, warmup, jump=3.0, dense=100, window=50,
                 dense_every=1, dense_at=None, rare: dict | None = None):
        self.model = model
        # {"train_loss": chunks, "val_loss": chunks}, cut once: the sets never change
        self.sets, self.masks = {}, {}
        for field, b in sets.items():
            rows: list = []
            self.sets[field] = length_chunks(b.x, b.y, rows_out=rows)
            if rare and field in rare and rare[field].any():
                self.masks[field] = [rare[field][r] for r in rows]
        self.total, self.every, self.jump, self.dense = total_steps, every, jump, dense
        self.dense_every = dense_every
        self.dense_at = dense_at  # a step the dense window opens at whatever the norm does
        self.warmup = warmup  # norms move fast while lr ramps up: no jump is judged there
        self.norms: deque[float] = deque(maxlen=window)
        self.dense_until = -1

    def state_dict(self) -> dict:
        return {"norms": list(self.norms), "dense_until": self.dense_until}

    def load_state_dict(self, state: dict) -> None:
        self.norms.extend(state["norms"])
        self.dense_until = state["dense_until"]

    def due(self, step: int, grad_norm: float) -> bool:
        """Whether step `step` is evaluated; `grad_norm` is the step's pre-clip norm, which
        opens the dense window. Called once per step, in order (it keeps the recent norms)."""
        judged = step >= self.warmup and len(self.norms) >= 10
        if (judged and grad_norm > self.jump * statistics.median(self.norms)) or \
                step == self.dense_at:
            self.dense_until = step + self.dense
        self.norms.append(grad_norm)
        dense = step <= self.dense_until and step % self.dense_every == 0
        return step % self.every == 0 or step == self.total - 1 or dense

    def measure(self, forward=None) -> dict[str, float]:
        """{"train_loss": ..., "val_loss": ...} of the model now, or of `forward`."""
        forward = forward or self.model
        out = {}
        for field, chunks in self.sets.items():
            if field in self.masks:
                out[field], out[f"{field}_rare"], out[f"{field}_common"] = \
                    split_losses(forward, chunks, self.masks[field])
            else:
                out[field] = mean_loss(forward, chunks)
        return out

    @property
    def split(self) -> list[str]:
        """The extra fields `measure` gives: train_loss_rare and _common when split."""
        return [f"{field}_{side}" for field in self.masks for side in ("rare", "common")]


class WeightCopy:
    """The model's twin the eval thread evaluates on: on a due step the training thread clones
    the weights (`take`, microseconds), and the eval thread loads them into the twin (`load`)
    when it gets to that step, so the training step after it can change the weights at once."""

    def __init__(self, model: torch.nn.Module, forward_of):
        self.live = list(model.parameters())
        self.twin = copy.deepcopy(model).requires_grad_(False)
        self.mine = list(self.twin.parameters())
        self.forward = forward_of(self.twin)

    def take(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return torch._foreach_mul(self.live, 1.0)  # one op: a copy of each tensor

    def load(self, weights: list[torch.Tensor]):
        with torch.no_grad():
            torch._foreach_copy_(self.mine, weights)
        return self.forward


class NoEvaluation:
    """An uninstrumented run evaluates nothing."""

    def due(self, step: int, grad_norm: float) -> bool:
        return False
