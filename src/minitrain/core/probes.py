"""Observers for the small labs (synthetic data kinds): per-class accuracy and predicted
probabilities, the geometry of an embedding table, and per-layer gradients of a deep MLP.
Each writes one extra JSONL file into the run directory (docs/run-format.md)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from minitrain.core import rundir
from minitrain.core.data import Batch
from minitrain.core.record import Observer


def participation_ratio(s: torch.Tensor) -> float:
    """(sum s_i^2)^2 / sum s_i^4 over singular values s: the number of directions the matrix's
    energy spreads over (between 1 and the rank)."""
    e = s.double() ** 2
    return float(e.sum() ** 2 / (e ** 2).sum()) if e.sum() > 0 else 0.0


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli (2007): exp of the Shannon entropy of p_i = s_i / sum s (0 log 0 = 0)."""
    s = s.double()
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _due(step: int, every: int, total: int) -> bool:
    return step % every == 0 or step == total - 1


class ClassProbe(Observer):
    """classes.jsonl: over the whole training set, accuracy overall and per target class, and
    the predicted class probabilities of its first `k_rows` examples."""

    def __init__(self, out: Path, model, full: Batch, names: list[str], every: int, total: int,
                 k_rows: int = 5):
        self.w = rundir.JsonlWriter(out / rundir.CLASSES)
        self.model, self.full, self.names = model, full, names
        self.every, self.total, self.k = every, total, k_rows

    @torch.no_grad()
    def on_step(self, r):
        if not _due(r.step, self.every, self.total):
            return
        logits = self.model(self.full.x)[:, -1]  # (N, C): one prediction per example
        y = self.full.y[:, -1]
        hit = logits.argmax(dim=1) == y
        per_class = {name: (float(hit[y == c].float().mean()) if (y == c).any() else None)
                     for c, name in enumerate(self.names)}
        probs = F.softmax(logits[: self.k], dim=1)
        self.w.write({"step": r.step, "accuracy": float(hit.float().mean()),
                      "class_accuracy": per_class,
                      "class_count": {n: int((y == c).sum()) for c, n in enumerate(self.names)},
                      "probs": [[round(float(p), 6) for p in row] for row in probs],
                      "targets": y[: self.k].tolist()})

    def close(self):
        self.w.close()


class EmbeddingGeometry(Observer):
    """geometry.jsonl, every step: each row of an embedding table (one per class), how far and
    through what angle it moved this step, the pairwise cosines, and the table's effective
    dimension (participation ratio, entropy effective rank)."""

    def __init__(self, out: Path, table: torch.Tensor, names: list[str]):
        self.w = rundir.JsonlWriter(out / rundir.GEOMETRY)
        self.table, self.names = table, names
        self.prev = table.detach().clone()  # the rows at initialisation

    @torch.no_grad()
    def on_step(self, r):
        E = self.table.detach()
        move = torch.linalg.vector_norm(E - self.prev, dim=1)
        unit, before = F.normalize(E, dim=1), F.normalize(self.prev, dim=1)
        # 2 atan2(|u - w|, |u + w|) is the angle between unit vectors, exact near 0 (acos is not)
        turn = 2 * torch.atan2(torch.linalg.vector_norm(unit - before, dim=1),
                               torch.linalg.vector_norm(unit + before, dim=1))
        cos = unit @ unit.T
        s = torch.linalg.svdvals(E)
        n = len(self.names)
        self.w.write({
            "step": r.step,
            "rows": {name: [round(float(v), 6) for v in E[i]] for i, name in enumerate(self.names)},
            "norm": {name: float(torch.linalg.vector_norm(E[i])) for i, name in
                     enumerate(self.names)},
            "displacement": {name: float(move[i]) for i, name in enumerate(self.names)},
            "angle_change_deg": {name: math.degrees(float(turn[i]))
                                 for i, name in enumerate(self.names)},
            "cosines": {f"{self.names[i]}-{self.names[j]}": float(cos[i, j])
                        for i in range(n) for j in range(i + 1, n)},
            "singular_values": s.tolist(),
            "participation_ratio": participation_ratio(s),
            "effective_rank": effective_rank(s),
        })
        self.prev = E.clone()

    def close(self):
        self.w.close()


class LayerProbe(Observer):
    """layers.jsonl: per hidden layer of a FeedForward model, over the whole training set, the
    size of its output h_l (RMS) and of dL/dh_l, and the norm of dL/dW_l. Measured before the
    first step (`updates` 0: initialisation) and after every `every`-th step. Uses
    torch.autograd.grad, so the training gradients are left as they were."""

    def __init__(self, out: Path, model, full: Batch, every: int, total: int,
                 at_init: bool = True):
        self.w = rundir.JsonlWriter(out / rundir.LAYERS)
        self.model, self.full, self.every, self.total = model, full, every, total
        if at_init:  # not again when a run resumes
            self._probe(0)

    def _probe(self, updates: int):
        hidden: list[torch.Tensor] = []
        logits = self.model(self.full.x, hidden)[:, -1]
        loss = F.cross_entropy(logits, self.full.y[:, -1])
        weights = [self.model.inp.weight, *(lay.weight for lay in self.model.layers)]
        grads = torch.autograd.grad(loss, [*hidden, *weights])
        dh, dw = grads[: len(hidden)], grads[len(hidden):]
        def norm(t):  # in float64: a plain net at gain 2 and depth 64 overflows float32 squares
            return torch.linalg.vector_norm(t.detach().double())

        self.w.write({
            "updates": updates, "loss": float(loss.detach()),
            "act_rms": [float(norm(h) / h.numel() ** 0.5) for h in hidden],
            "act_grad_norm": [float(norm(g)) for g in dh],
            "weight_grad_norm": [float(norm(g)) for g in dw],
        })

    def on_step(self, r):
        if _due(r.step, self.every, self.total):
            self._probe(r.step + 1)

    def close(self):
        self.w.close()
