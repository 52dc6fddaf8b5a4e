"""Hand-written AdamW with a global-norm clip in front of the moments, and the LR schedule.

One multi-tensor (`torch._foreach_*`) op per equation, so the step costs what torch's own
foreach AdamW costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ClipResult:
    grad_norm: float  # global L2 norm before clipping
    clip_factor: float  # 1.0 when the clip did nothing
    tensor_norms: torch.Tensor  # (n_tensors,) per-tensor L2 norms before clipping


@torch.no_grad()
def clip_grad_norm(grads: list[torch.Tensor], max_norm: float | None) -> ClipResult:
    """Scale `grads` in place so their global L2 norm is at most max_norm (None = off)."""
    tensor_norms = torch.stack(torch._foreach_norm(grads))
    total = torch.linalg.vector_norm(tensor_norms)  # ||g|| = sqrt(sum_i ||g_i||^2)
    g_norm = float(total)
    clip = math.inf if max_norm is None else max_norm
    clip_factor = min(1.0, clip / (g_norm + 1e-12))
    if clip_factor < 1.0:
        torch._foreach_mul_(grads, clip_factor)
    return ClipResult(g_norm, clip_factor, tensor_norms)


@dataclass
class StepStats:
    grad_norm_pre_clip: float
    grad_norm_post_clip: float
    clip_factor: float
    update_norm: float  # L2 norm of the change applied to all parameters this step
    tensor_grad_norms: torch.Tensor  # pre-clip, one per parameter tensor, in param order


class AdamW:
    """AdamW (Loshchilov & Hutter) with bias correction, like torch.optim.AdamW, plus grad_clip.

    params: tensors, or groups {"params": [...], "weight_decay": float}.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 grad_clip: float | None = None):
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": params}]
        self.groups = [{"params": list(g["params"]),
                        "weight_decay": g.get("weight_decay", weight_decay)} for g in params]
        self.params = [p for g in self.groups for p in g["params"]]
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.grad_clip = None if grad_clip is None or math.isinf(grad_clip) else grad_clip
        self.t = 0  # steps taken
        self.m = [torch.zeros_like(p) for p in self.params]  # first moment
        self.v = [torch.zeros_like(p) for p in self.params]  # second moment

    def state_dict(self) -> dict:
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        for mine, saved in ((self.m, state["m"]), (self.v, state["v"])):
            for a, b in zip(mine, saved, strict=True):
                a.copy_(b)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> StepStats:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        clip = clip_grad_norm(grads, self.grad_clip)  # before the moments see the gradient
        self.t += 1
        b1, b2 = self.betas
        lr = self.lr
        # m = b1 m + (1 - b1) g
        torch._foreach_lerp_(self.m, grads, 1 - b1)
        # v = b2 v + (1 - b2) g^2
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - b2)
        # update = lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, math.sqrt(1 - b2**self.t))
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(self.m, denom)
        torch._foreach_mul_(update, lr / (1 - b1**self.t))
        # decoupled weight decay: update += lr * wd * p (uses p before this step's change)
        start = 0
        for g in self.groups:
            n = len(g["params"])
            if g["weight_decay"]:
                wd = lr * g["weight_decay"]
                torch._foreach_add_(update[start:start + n], g["params"], alpha=wd)
            start += n
        # p = p - update
        torch._foreach_sub_(self.params, update)
        update_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(update))))
        return StepStats(clip.grad_norm, clip.grad_norm * clip.clip_factor, clip.clip_factor,
                         update_norm, clip.tensor_norms)


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to `peak` over warmup_steps, then cosine down to min_ratio * peak."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * (min_ratio + (1 - min_ratio) * cosine)
