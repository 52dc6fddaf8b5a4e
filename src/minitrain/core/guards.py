"""The guards in front of the optimizer: the clip in its three modes (the functional form,
tested against torch's), the running norm statistics behind the adaptive clip and the outlier
skip, and `plan`, the one rule that says what the guards do with a step's pre-clip norm."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from minitrain.core.config import OptimizerConfig, clip_threshold
from minitrain.core.flat import Flat


@dataclass
class ClipResult:
    # what the moments see: `grads` itself when the clip did nothing (with `out`: out's views,
    # clipped or not)
    grads: list[torch.Tensor]
    grad_norm: float  # global L2 norm before clipping
    post_norm: float  # global L2 norm after clipping
    tensor_norms: torch.Tensor  # (n_tensors,) per-tensor L2 norms before clipping
    clip_factor: float = 1.0  # global: min(1, t / (norm + 1e-12)); other modes: post / pre


def _ratio(post: float, pre: float) -> float:
    if not math.isfinite(pre):
        return 0.0  # an infinite gradient: like the global formula, t / inf
    return post / pre if pre > 0 else 1.0


def global_factor(threshold: float, g_norm: float) -> float:
    """The global clip's scale for the gradient (core/loop.py writes the same rule out)."""
    return min(1.0, threshold / (g_norm + 1e-12))


@torch.no_grad()
def scaled(out: Flat, grads: list[torch.Tensor], clip_factor: float, g_norm: float,
           tensor_norms: torch.Tensor) -> ClipResult:
    """The global clip into `out` (the moments' copy): out = grads x clip_factor."""
    out.fill(grads)
    if clip_factor == 1.0:
        return ClipResult(out.views, g_norm, g_norm, tensor_norms)
    out.data.mul_(clip_factor)
    return ClipResult(out.views, g_norm, g_norm * clip_factor, tensor_norms, clip_factor)


@torch.no_grad()
def clip_grads(grads: list[torch.Tensor], threshold: float | None, mode: str = "global",
               tensor_norms: torch.Tensor | None = None, g_norm: float | None = None,
               out: Flat | None = None) -> ClipResult:
    """Clip `grads` (not in place) by `threshold` (None = off):
    global:     g *= min(1, threshold / (||g|| + 1e-12)), ||g|| over all tensors together
    per-tensor: g_i *= min(1, threshold / (||g_i|| + 1e-12)), each tensor on its own
    value:      each element clamped to [-threshold, threshold]
    `tensor_norms` and `g_norm` may be passed when the caller already has them. With `out`
    (a `Flat` of the same shapes) the result is always written there, clipped or not, and is
    its views; the clip is then one op over all coordinates (the same bits, elementwise)."""
    if tensor_norms is None:
        tensor_norms = torch.stack(torch._foreach_norm(grads))
    if g_norm is None:
        g_norm = float(torch.linalg.vector_norm(tensor_norms))  # sqrt(sum_i ||g_i||^2)
    threshold = clip_threshold(threshold)
    if threshold is None or mode == "global":
        clip_factor = 1.0 if threshold is None else global_factor(threshold, g_norm)
        if out is not None:
            return scaled(out, grads, clip_factor, g_norm, tensor_norms)
        if clip_factor == 1.0:
            return ClipResult(grads, g_norm, g_norm, tensor_norms)
        grads = torch._foreach_mul(grads, clip_factor)
        return ClipResult(grads, g_norm, g_norm * clip_factor, tensor_norms, clip_factor)
    if out is not None:
        out.fill(grads)
        grads = out.views
    if mode == "per-tensor":
        factors = (threshold / (tensor_norms + 1e-12)).clamp(max=1.0)
        if out is not None:
            torch._foreach_mul_(grads, list(factors.unbind()))
            clipped = grads
        else:
            clipped = torch._foreach_mul(grads, list(factors.unbind()))
        post = float(torch.linalg.vector_norm(tensor_norms * factors))
    elif mode == "value":
        if out is not None:
            out.data.clamp_min_(-threshold).clamp_max_(threshold)
            clipped = grads
        else:
            clipped = torch._foreach_clamp_max(torch._foreach_clamp_min(grads, -threshold),
                                               threshold)
        post = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(clipped))))
    else:
        raise ValueError(f"unknown clip mode {mode!r}")  # config validation stops this earlier
    return ClipResult(clipped, g_norm, post, tensor_norms, _ratio(post, g_norm))


class NormGuard:
    """Running statistics of the pre-clip global norm, and the two guards built on them.

    Mean and variance are exponential moving averages (factor `ema`), as in ZClip (Kumar et
    al., 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training"). After `warmup` norms:
    - clip_z: cap the norm at mean + clip_z * std (the adaptive clip);
    - skip_z: drop the whole update when the norm's z-score is above skip_z.
    The statistics are fed the norm that was applied (after the cap; nothing when skipped), so
    one spike does not raise the bar for the next.
    """

    def __init__(self, clip_z: float | None = None, skip_z: float | None = None,
                 ema: float = 0.97, warmup: int = 25):
        self.clip_z, self.skip_z, self.ema, self.warmup = clip_z, skip_z, ema, warmup
        self.mean, self.var, self.count = 0.0, 0.0, 0

    @property
    def active(self) -> bool:
        return self.clip_z is not None or self.skip_z is not None

    def z(self, g: float) -> float:
        """z-score of `g` against the history; nan until `warmup` norms are in."""
        if self.count < self.warmup:
            return math.nan
        return (g - self.mean) / max(math.sqrt(self.var), 1e-12)

    def cap(self) -> float | None:
        if self.clip_z is None or self.count < self.warmup:
            return None
        return self.mean + self.clip_z * math.sqrt(self.var)

    def observe(self, g: float) -> None:
        if self.count < self.warmup:  # plain running mean/variance until the EMA takes over
            self.count += 1
            delta = g - self.mean
            self.mean += delta / self.count
            self.var += (delta * (g - self.mean) - self.var) / self.count
            return
        self.count += 1
        delta = g - self.mean
        self.mean += (1 - self.ema) * delta
        self.var = self.ema * (self.var + (1 - self.ema) * delta * delta)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


class Plan(NamedTuple):
    z: float  # the norm's z-score against the guard's history (nan without a guard)
    skip: bool  # drop this update altogether
    threshold: float | None  # the clip threshold in force; None: no clip
    mode: str  # the clip mode in force


def plan(g_norm: float, grad_clip: float | None, clip_mode: str, guard: NormGuard,
         drop: bool = False) -> Plan:
    """What the guards make of a pre-clip global norm, given their history: (z-score, skip
    the update?, clip threshold or None, clip mode). `Optimizer.step` follows it;
    `minitrain.tools.branch` replays it over a logged run to prove the guards never acted."""
    z = guard.z(g_norm) if guard.active and not drop else math.nan
    if drop or (guard.skip_z is not None and z > guard.skip_z):
        return Plan(z, True, None, clip_mode)
    threshold, mode = grad_clip, clip_mode
    cap = guard.cap()
    if cap is not None and (threshold is None or cap < threshold):
        threshold, mode = cap, "global"
    return Plan(z, False, threshold, mode)


def clip_at(grad_clip: float | None, clip_from_step: int, step: int | None) -> float | None:
    """The fixed clip's threshold at `step`: none before `clip_from_step` (a clip switched on
    late, on a run that was unclipped until then); `step` None: the clip always in force."""
    return None if step is not None and step < clip_from_step else grad_clip


def guard_for(o: OptimizerConfig) -> NormGuard:
    """The guards a config names, with no history yet."""
    return NormGuard(o.clip_z, o.skip_z, o.norm_ema, warmup=max(25, o.warmup_steps))
