"""AdamW to read: one line per equation, one parameter tensor at a time.

`optim.AdamW` runs the same equations as one op over a flat tensor of every coordinate, which
is fast but hides them. This is the version a person checks by eye and theory/02 quotes;
tests/test_adamw_reference.py steps both from one start and requires the same bits, so the
fast one is this one. Only the global-norm clip and the weight-decay groups are here: the
other clip modes, the guards and the step statistics live in `optim` alone.
"""

from __future__ import annotations

import math

import torch


class ReferenceAdamW:
    """AdamW with bias correction (as torch.optim.AdamW), behind the global-norm clip.

    groups: [{"params": [...], "weight_decay": wd}, ...], as `optim.param_groups` gives them.
    grad_clip: the clip's threshold; None = no clip.
    """

    def __init__(self, groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, grad_clip=None):
        self.params = [p for g in groups for p in g["params"]]
        self.wd = [g["weight_decay"] for g in groups for _ in g["params"]]  # one per tensor
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.clip = math.inf if grad_clip is None else grad_clip  # inf: the factor is always 1
        self.t = 0  # updates so far
        self.m = [torch.zeros_like(p) for p in self.params]  # first moment
        self.v = [torch.zeros_like(p) for p in self.params]  # second moment

    @torch.no_grad()
    def step(self) -> float:
        """One update of every parameter; returns the global gradient norm before the clip."""
        b1, b2 = self.betas
        lr, eps = self.lr, self.eps
        self.t += 1
        # a parameter without a gradient gets zeros: its m and v still decay
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        # ||g|| over all tensors together: sqrt(sum_i ||g_i||^2), as the norm of the norms
        g_norm = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(grad) for grad in grads])))
        clip_factor = min(1.0, self.clip / (g_norm + 1e-12))
        for p, wd, grad, m, v in zip(self.params, self.wd, grads, self.m, self.v):
            g = clip_factor * grad  # a clipped copy: p.grad stays raw
            m.lerp_(g, 1 - b1)  # m = b1 m + (1 - b1) g
            v.mul_(b2).addcmul_(g, g, value=1 - b2)  # v = b2 v + (1 - b2) g^2
            denom = v.sqrt() / math.sqrt(1 - b2**self.t) + eps  # sqrt(v_hat) + eps
            update = m / denom * (lr / (1 - b1**self.t))  # lr m_hat / (sqrt(v_hat) + eps)
            update.add_(p, alpha=lr * wd)  # decoupled weight decay: + lr wd p (p before step)
            p.sub_(update)  # p = p - update
        return g_norm
