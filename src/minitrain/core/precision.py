"""The forward pass's numerics (fp32, or bf16/fp16 autocast; compiled or not) and dynamic loss
scaling for fp16.

Dynamic loss scaling for fp16: the loss is multiplied by `scale` before the backward pass
so small gradients survive fp16's narrow range, and the gradients are divided by it again
before anything reads them (the clip, the norms, the moments). A step whose gradients
overflowed is dropped and the scale halved; after `growth_interval` clean steps it doubles.
This is the scheme of Micikevicius et al. (2018), "Mixed Precision Training", and of
torch.amp.GradScaler.
"""

from __future__ import annotations

import torch


class NoScaler:
    """fp32 and bf16: the loss as it is, no gradient to unscale, no step dropped."""

    scale = None

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale_(self, params: list[torch.Tensor]) -> bool:
        return True

    def update(self, finite: bool) -> None:
        pass


class LossScaler:
    def __init__(self, scale: float = 2.0**16, growth_interval: int = 200,
                 factor: float = 2.0, min_scale: float = 1.0):
        self.scale, self.growth_interval, self.factor = scale, growth_interval, factor
        self.min_scale = min_scale
        self.good_steps = 0  # clean steps since the scale last changed

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, params: list[torch.Tensor]) -> bool:
        """Divide every gradient by the scale, in place; True when all are finite."""
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_mul_(grads, 1.0 / self.scale)
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale = max(self.min_scale, self.scale / self.factor)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.factor
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = state["scale"], state["good_steps"]


def deterministic(compiled: bool) -> None:
    """Deterministic kernels only, from here on: on CUDA this picks the attention backward's
    deterministic kernels (its defaults are not), and an op with none stops the run rather
    than drift. torch.use_deterministic_algorithms also sets the compiler's own flag, and
    importing the compiler for it costs a process about 1.7 s of CPU here: an uncompiled run
    sets torch's flag alone (the same call the public one makes after the compiler's)."""
    core = getattr(torch._C, "_set_deterministic_algorithms", None)
    if compiled or core is None:
        torch.use_deterministic_algorithms(True)
    else:
        core(True, warn_only=False)


def forward_pass(model: torch.nn.Module, device: torch.device, train_cfg):
    """The model's forward as configured (compiled or not; bf16 or fp16 autocast, or fp32),
    returning fp32 logits so the losses, the logs and the optimizer stay in fp32."""
    fwd = torch.compile(model) if train_cfg.compile else model
    low = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(train_cfg.dtype)

    def forward(idx):
        with torch.autocast(device.type, dtype=low or torch.bfloat16, enabled=low is not None):
            return fwd(idx).float()  # (B, T, V); a no-op in fp32
    return forward
