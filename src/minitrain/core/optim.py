"""The optimizers (hand-written AdamW and SGD with momentum), the gradient guards in front of
them (clip modes, the adaptive z-score clip, the outlier skip), and the LR schedule.

The optimizer's own state (moments, the gradient copy the moments see, the update) lives in
one flat tensor per role, with a per-parameter view of it for observers and checkpoints, so
each equation is one tensor op over every coordinate: a step costs what torch's foreach
optimizers cost (on the CPU their `_foreach_*` ops loop over the tensors one kernel at a
time). Elementwise ops round each coordinate alone, so the flat layout gives the same bits as
one op per tensor. `p.grad` is left as the model produced it (pre-clip): the optimizer clips a
copy, so observers always read the raw gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minitrain.core.config import OptimizerConfig


@dataclass
class ClipResult:
    # what the moments see: `grads` itself when the clip did nothing (with `out`: out's views,
    # clipped or not)
    grads: list[torch.Tensor]
    grad_norm: float  # global L2 norm before clipping
    post_norm: float  # global L2 norm after clipping
    tensor_norms: torch.Tensor  # (n_tensors,) per-tensor L2 norms before clipping
    clip_factor: float = 1.0  # global: min(1, t / (norm + 1e-12)); other modes: post / pre


class Flat:
    """All the parameters' coordinates in one tensor (`data`) and a view of it shaped like each
    parameter (`views`, in parameter order): the elementwise equations run on `data` as one
    op, per-parameter code (weight decay, observers, checkpoints) uses the views.

    Parameters of one size lie side by side in `data` (sizes in the order they first come),
    so that `norms` and `maxes` take all of a size at once, one op over a (count, size)
    matrix: on the CPU each op costs microseconds of dispatch, more than a small tensor's
    arithmetic, and on the CPU torch reduces each row of a matrix alone, with the bits of the
    row's own reduction. (CUDA's kernels sum in other orders: there the norms agree with the
    per-tensor ones to rounding, not bit for bit.)"""

    def __init__(self, params: list[torch.Tensor]):
        p0 = params[0]
        if any(p.dtype != p0.dtype or p.device != p0.device for p in params):
            raise ValueError("a flat tensor of the parameters needs one dtype and device")
        sizes = [p.numel() for p in params]
        first = {}
        for i, n in enumerate(sizes):
            first.setdefault(n, i)
        self.order = sorted(range(len(params)), key=lambda i: (first[sizes[i]], i))  # in data
        self.data = torch.zeros(sum(sizes), dtype=p0.dtype, device=p0.device)
        self.views = [None] * len(params)
        rank = [0] * len(params)  # each parameter's place in data's order
        blocks, start = [], 0  # [start, size, count] per size, in data's order
        for pos, (i, chunk) in enumerate(
                zip(self.order, self.data.split([sizes[i] for i in self.order]))):
            self.views[i], rank[i] = chunk.view_as(params[i]), pos
            if not blocks or blocks[-1][1] != sizes[i]:
                blocks.append([start, sizes[i], 0])
            blocks[-1][2] += 1
            start += sizes[i]
        self._blocks = [self.data[a:a + n * count].view(count, n) for a, n, count in blocks]
        self._rank = torch.tensor(rank, device=p0.device)

    def fill(self, tensors: list[torch.Tensor]) -> None:
        """data = the tensors (one per parameter, in parameter order), flattened."""
        torch.cat([tensors[i].reshape(-1) for i in self.order], out=self.data)

    def norms(self) -> torch.Tensor:
        """Each view's L2 norm, in parameter order (on the CPU, the bits of
        torch._foreach_norm)."""
        return torch.cat([torch.linalg.vector_norm(b, dim=1) for b in self._blocks])[self._rank]

    def maxes(self) -> torch.Tensor:
        """Each view's largest entry, in parameter order."""
        return torch.cat([b.amax(dim=1) for b in self._blocks])[self._rank]


def _ratio(post: float, pre: float) -> float:
    if not math.isfinite(pre):
        return 0.0  # an infinite gradient: like the global formula, t / inf
    return post / pre if pre > 0 else 1.0


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
    if out is not None:
        out.fill(grads)
        grads = out.views
    if threshold is None or math.isinf(threshold):
        return ClipResult(grads, g_norm, g_norm, tensor_norms)
    if mode == "global":
        clip_factor = min(1.0, threshold / (g_norm + 1e-12))
        if clip_factor == 1.0:
            return ClipResult(grads, g_norm, g_norm, tensor_norms)
        if out is not None:
            out.data.mul_(clip_factor)
        else:
            grads = torch._foreach_mul(grads, clip_factor)
        return ClipResult(grads, g_norm, g_norm * clip_factor, tensor_norms, clip_factor)
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


def plan(g_norm: float, grad_clip: float | None, clip_mode: str, guard: NormGuard,
         drop: bool = False) -> tuple[float, bool, float | None, str]:
    """What the guards make of a pre-clip global norm, given their history: (z-score, skip
    the update?, clip threshold or None, clip mode). `Optimizer.step` follows it;
    `minitrain.tools.branch` replays it over a logged run to prove the guards never acted."""
    z = guard.z(g_norm) if guard.active and not drop else math.nan
    if drop or (guard.skip_z is not None and z > guard.skip_z):
        return z, True, None, clip_mode
    threshold, mode = grad_clip, clip_mode
    cap = guard.cap()
    if cap is not None and (threshold is None or cap < threshold):
        threshold, mode = cap, "global"
    return z, False, threshold, mode


def guard_for(o: OptimizerConfig) -> NormGuard:
    """The guards a config names, with no history yet."""
    return NormGuard(o.clip_z, o.skip_z, o.norm_ema, warmup=max(25, o.warmup_steps))


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

    def __init__(self, params, lr, weight_decay, grad_clip, clip_mode, guard):
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": params}]
        self.groups = [{"params": list(g["params"]),
                        "weight_decay": g.get("weight_decay", weight_decay)} for g in params]
        self.params = [p for g in self.groups for p in g["params"]]
        self.lr = lr
        self.grad_clip = None if grad_clip is None or math.isinf(grad_clip) else grad_clip
        self.clip_mode = clip_mode  # one of CLIP_MODES, checked at config load
        self.guard = guard or NormGuard()
        self.t = 0  # updates applied (skipped steps do not count)
        self.grads = Flat(self.params)  # what the moments see: a (clipped) copy of p.grad
        self.update = Flat(self.params)  # this step's change: p -= update

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        # copies, not views: a checkpoint holds one tensor per parameter, as it always did
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
    def step(self, drop: bool = False) -> StepStats:
        """One update; with `drop` (an fp16 overflow) or an outlier under skip_z, none."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        tensor_norms = torch.stack(torch._foreach_norm(grads))
        g_norm = float(torch.linalg.vector_norm(tensor_norms))
        guard = self.guard
        z, skip, threshold, mode = plan(g_norm, self.grad_clip, self.clip_mode, guard, drop)
        if skip:  # no update at all
            return StepStats(g_norm, 0.0, 0.0, 0.0, 0.0, tensor_norms, skipped=True, grad_z=z)
        # the clip comes before the moments see the gradient, as a clipped copy: p.grad stays
        # raw for the observers. (Folding the factor into the moment update would save the
        # copy but round differently: a clipped run would no longer repeat the published ones.)
        clip = clip_grads(grads, threshold, mode, tensor_norms, g_norm, out=self.grads)
        if guard.active:
            guard.observe(clip.post_norm)
        self.t += 1
        self._update(self.grads, self.update)
        update = self.update.views
        # p = p - update
        torch._foreach_sub_(self.params, update)
        # both sizes of the update in one copy to the host: the L2 norm per tensor first, as
        # it always was on the CPU (a sum's rounding depends on its order); the max |x| by one
        # aminmax over all coordinates (exact in any order; vector_norm(ord=inf) is 10x slower)
        update_norm, update_max = torch.stack([
            torch.linalg.vector_norm(self.update.norms()),
            torch.stack(torch.aminmax(self.update.data)).abs().max()]).tolist()
        return StepStats(clip.grad_norm, clip.post_norm, clip.clip_factor, update_norm,
                         update_max, clip.tensor_norms, grad_z=z)

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
    shared guards and clip."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 grad_clip: float | None = None, clip_mode: str = "global",
                 guard: NormGuard | None = None):
        super().__init__(params, lr, weight_decay, grad_clip, clip_mode, guard)
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
                 guard: NormGuard | None = None):
        super().__init__(params, lr, weight_decay, grad_clip, clip_mode, guard)
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
                  clip_mode=o.clip_mode, guard=guard_for(o))
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
