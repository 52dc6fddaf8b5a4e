"""The optimizers (hand-written AdamW and SGD with momentum) and the LR schedule.

Each optimizer keeps its state (moments, the gradient copy the moments see, the update) in one
flat tensor per role (`Flat`), so each equation is one tensor op over every coordinate; an
elementwise op rounds each coordinate alone, so this gives the bits of the per-tensor
reference (`adamw_reference.py`), which the tests hold it to. `p.grad` stays as the model
produced it: the clip writes a copy, so observers always read the raw gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from minitrain.core.config import OptimizerConfig, clip_threshold
from minitrain.core.flat import Flat
from minitrain.core.guards import (
    ClipResult,
    NormGuard,
    Plan,
    clip_at,
    clip_grads,
    guard_for,
    plan,
    scaled,
)


class GradNorms(NamedTuple):
    grads: list[torch.Tensor]  # the raw gradient, one tensor per parameter (zeros for none)
    per_tensor: torch.Tensor  # (n_tensors,) L2 norm of each
    total: float  # the global L2 norm: sqrt(sum of per_tensor^2)


@dataclass
class StepStats:
    grad_norm_pre_clip: float
    grad_norm_post_clip: float  # the norm that reached the moments: 0 when skipped
    clip_factor: float  # post / pre; 1.0 when no guard acted
    update_norm: float  # L2 norm of the change applied to all parameters this step
    update_max: float  # largest change of any one coordinate this step
    tensor_grad_norms: torch.Tensor  # pre-clip, one per parameter tensor, in param order
    skipped: bool = False  # the outlier guard dropped this step's update
    grad_z: float = math.nan  # z-score of the pre-clip norm (nan without a guard or in warm-up)


class Optimizer:
    """The step both optimizers share: raw gradients -> guards and clip -> `_update`.

    params: tensors, or groups {"params": [...], "weight_decay": float}.
    """

    def __init__(self, params, lr, weight_decay, grad_clip, clip_mode, guard, clip_from_step=0):
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": params}]
        self.groups = [{"params": list(g["params"]),
                        "weight_decay": g.get("weight_decay", weight_decay)} for g in params]
        self.params = [p for g in self.groups for p in g["params"]]
        self.lr = lr
        self.grad_clip = clip_threshold(grad_clip)  # None: no clip
        self.clip_mode = clip_mode  # one of CLIP_MODES, checked at config load
        self.clip_from_step = clip_from_step  # grad_clip acts from this step on
        self.guard = guard or NormGuard()
        self.t = 0  # updates applied (skipped steps do not count)
        self.grads = Flat(self.params)  # what the moments see: a (clipped) copy of p.grad
        self.update = Flat(self.params)  # this step's change: p -= update

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        # copies, not views: torch.save writes a view's whole storage, so each view would
        # carry the whole flat tensor; a copy is one tensor per parameter
        state = {name: [x.clone() for x in xs] for name, xs in self._state().items()}
        return {"t": self.t, "guard": self.guard.state_dict(), **state}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        if "guard" in state:
            self.guard.load_state_dict(state["guard"])
        for name, tensors in self._state().items():
            for a, b in zip(tensors, state[name], strict=True):
                a.copy_(b)

    @torch.no_grad()
    def grad_norms(self) -> GradNorms:
        """The raw gradient and its L2 norms, before any guard."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        per_tensor = torch.stack(torch._foreach_norm(grads))
        return GradNorms(grads, per_tensor, float(torch.linalg.vector_norm(per_tensor)))

    def plan(self, norms: GradNorms, drop: bool = False, step: int | None = None) -> Plan:
        """What the guards do with step `step` (guards.plan); `drop`: an fp16 overflow."""
        threshold = clip_at(self.grad_clip, self.clip_from_step, step)
        return plan(norms.total, threshold, self.clip_mode, self.guard, drop)

    @torch.no_grad()
    def scale(self, norms: GradNorms, clip_factor: float) -> ClipResult:
        """The global clip: the moments' copy of the gradient is the raw one x clip_factor."""
        return scaled(self.grads, norms.grads, clip_factor, norms.total, norms.per_tensor)

    @torch.no_grad()
    def clip(self, norms: GradNorms, p: Plan) -> ClipResult:
        """The moments' copy of the gradient clipped as `p` says, in any mode."""
        return clip_grads(norms.grads, p.threshold, p.mode, norms.per_tensor, norms.total,
                          out=self.grads)

    @torch.no_grad()
    def apply(self, p: Plan, clip: ClipResult) -> StepStats:
        """The update from the clipped copy (none when the plan skips the step)."""
        if p.skip:
            return StepStats(clip.grad_norm, 0.0, 0.0, 0.0, 0.0, clip.tensor_norms,
                             skipped=True, grad_z=p.z)
        if self.guard.active:
            self.guard.observe(clip.post_norm)  # the norm that was applied
        self.t += 1
        self._update(self.grads, self.update)
        # p = p - update
        torch._foreach_sub_(self.params, self.update.views)
        # L2 per tensor, then over the tensors (a sum's rounding depends on its order: this
        # is the reference's); the largest |change| from one aminmax (a max is exact in any
        # order); both read back together
        update_norm, update_max = torch.stack([
            torch.linalg.vector_norm(self.update.norms()),
            torch.stack(torch.aminmax(self.update.data)).abs().max()]).tolist()
        return StepStats(clip.grad_norm, clip.post_norm, clip.clip_factor, update_norm,
                         update_max, clip.tensor_norms, grad_z=p.z)

    def step(self, drop: bool = False) -> StepStats:
        """Guards, clip and update in one call, for code outside the training loop (the loop
        writes the global clip out itself: core/loop.py)."""
        norms = self.grad_norms()
        p = self.plan(norms, drop)
        return self.apply(p, self.clip(norms, p))

    def _decay(self, xs: list[torch.Tensor], scale: float) -> None:
        """xs += scale * wd * p, per group (p before this step's change); xs: one tensor per
        parameter (the update, or SGD's momentum)."""
        start = 0
        for g in self.groups:
            n = len(g["params"])
            if g["weight_decay"]:
                torch._foreach_add_(xs[start:start + n], g["params"],
                                    alpha=scale * g["weight_decay"])
            start += n


class AdamW(Optimizer):
    """AdamW (Loshchilov & Hutter) with bias correction, like torch.optim.AdamW, behind the
    shared guards and clip. `adamw_reference.ReferenceAdamW` is the same step one tensor at a
    time; tests/test_adamw_reference.py holds the two to the same bits."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 grad_clip: float | None = None, clip_mode: str = "global",
                 guard: NormGuard | None = None, clip_from_step: int = 0):
        super().__init__(params, lr, weight_decay, grad_clip, clip_mode, guard, clip_from_step)
        self.betas, self.eps = tuple(betas), eps
        self.m_flat, self.v_flat = Flat(self.params), Flat(self.params)  # observers read these
        self._denom = Flat(self.params)
        self.m = self.m_flat.views  # first moment, per parameter
        self.v = self.v_flat.views  # second moment, per parameter

    def _state(self) -> dict:
        return {"m": self.m, "v": self.v}

    def _update(self, grads: Flat, out: Flat) -> None:
        b1, b2 = self.betas
        lr = self.lr
        g, update = grads.data, out.data
        m, v, denom = self.m_flat.data, self.v_flat.data, self._denom.data
        # m = b1 m + (1 - b1) g
        m.lerp_(g, 1 - b1)
        # v = b2 v + (1 - b2) g^2
        v.mul_(b2)
        v.addcmul_(g, g, value=1 - b2)
        # update = lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        torch.sqrt(v, out=denom)
        denom.div_(math.sqrt(1 - b2**self.t))
        denom.add_(self.eps)
        torch.div(m, denom, out=update)
        update.mul_(lr / (1 - b1**self.t))
        # decoupled weight decay: update += lr * wd * p
        self._decay(out.views, lr)


class SGD(Optimizer):
    """SGD with momentum, like torch.optim.SGD (dampening 0, not Nesterov): weight decay is
    L2 added to the gradient, and the step is lr times the momentum buffer, so it grows with
    the gradient, unlike Adam's normalised step."""

    def __init__(self, params, lr=1e-2, momentum=0.9, weight_decay=0.0,
                 grad_clip: float | None = None, clip_mode: str = "global",
                 guard: NormGuard | None = None, clip_from_step: int = 0):
        super().__init__(params, lr, weight_decay, grad_clip, clip_mode, guard, clip_from_step)
        self.momentum = momentum
        self.m_flat = Flat(self.params)
        self.m = self.m_flat.views  # momentum buffer, per parameter
        self.v = self.v_flat = None  # no second moment: observers check for it

    def _state(self) -> dict:
        return {"m": self.m}

    def _update(self, grads: Flat, out: Flat) -> None:
        # m = momentum m + g + wd * p   (m starts at 0, so the first step's m is g + wd p, as
        # in torch)
        m = self.m_flat.data
        m.mul_(self.momentum)
        m.add_(grads.data)
        self._decay(self.m, 1.0)
        # update = lr m
        torch.mul(m, self.lr, out=out.data)


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Decay matrices (embeddings included); leave LayerNorm gains and biases alone."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2]
    rest = [p for n, p in named if p.dim() < 2]
    names = [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}], names


def build(o: OptimizerConfig, groups) -> Optimizer:
    """The optimizer a config names, with its clip and guards."""
    common = dict(lr=o.lr, weight_decay=o.weight_decay, grad_clip=o.grad_clip,
                  clip_mode=o.clip_mode, guard=guard_for(o), clip_from_step=o.clip_from_step)
    if o.name == "sgd":
        return SGD(groups, momentum=o.momentum, **common)
    return AdamW(groups, betas=o.betas, eps=o.eps, **common)


def update_bound(o: OptimizerConfig, t: int, lr: float) -> float:
    """The most any one coordinate can move at update number `t` (1-based) with learning rate
    `lr`, weight decay aside, whatever the gradients were (theory/02, section 13).
    AdamW: by Cauchy-Schwarz on m and v, |m_hat / sqrt(v_hat)| <= sqrt(1 - b2^t) / (1 - b1^t)
    * (1 - b1) / sqrt(1 - b2) * sqrt(sum_{j<t} (b1^2 / b2)^j); eps only lowers it. The clip
    plays no part: Adam's step does not depend on the gradient's scale.
    SGD: with a clip c (any mode), |g_i| <= c, so |m_i| <= c (1 - mu^t) / (1 - mu); no clip, no
    bound (inf)."""
    if o.name == "sgd":
        if o.grad_clip is None:
            return math.inf
        mu = o.momentum  # < 1, checked at load
        return lr * o.grad_clip * (1 - mu**t) / (1 - mu)
    b1, b2 = o.betas
    r = b1 * b1 / b2
    series = t if r == 1 else (1 - r**t) / (1 - r)
    return lr * math.sqrt(1 - b2**t) / (1 - b1**t) * (1 - b1) / math.sqrt(1 - b2) * \
        math.sqrt(series)


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to `peak` over warmup_steps, then cosine down to min_ratio * peak."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * (min_ratio + (1 - min_ratio) * cosine)
