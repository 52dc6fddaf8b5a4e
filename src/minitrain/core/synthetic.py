"""Synthetic data kinds, drawn once from the seed: toy next-token pairs and tabular rows."""

from __future__ import annotations

import torch

TOY_VOCAB = ["A", "B", "C", "D"]
TOY_RARE_TOKEN = 1  # B
# the next-token rule is the cycle A -> B -> C -> D -> A; the pairs holding B are the rare ones
TOY_PAIRS = [(0, 1), (1, 2), (2, 3), (3, 0)]


def toy_tokens(n: int, rare_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` (input, next) pairs, round(n * rare_fraction) of them holding B (at least 1), the rest
    split over the two pairs without B; in a seeded random order. Returns x (n,), y (n,)."""
    n_rare = max(1, round(n * rare_fraction))
    rare = [p for p in TOY_PAIRS if TOY_RARE_TOKEN in p]
    common = [p for p in TOY_PAIRS if TOY_RARE_TOKEN not in p]
    pairs = [rare[i % len(rare)] for i in range(n_rare)]
    pairs += [common[i % len(common)] for i in range(n - n_rare)]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    xy = torch.tensor(pairs)[order]
    return xy[:, 0].clone(), xy[:, 1].clone()


def toy_balanced(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out toy set: every pair equally often, so each class weighs the same."""
    xy = torch.tensor([TOY_PAIRS[i % len(TOY_PAIRS)] for i in range(max(n, len(TOY_PAIRS)))])
    return xy[:, 0].clone(), xy[:, 1].clone()


def tabular(n: int, n_val: int, n_features: int, n_classes: int,
            seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Rows whose columns have their own offset and scale (so standardising matters), labelled by
    a random linear teacher with noise. Standardised with the training rows' mean and std.
    Returns x (n, F), y (n,), x_val, y_val, and the raw columns' mean and std."""
    g = torch.Generator().manual_seed(seed)
    total = n + n_val
    offset = torch.empty(n_features).uniform_(-5, 5, generator=g)
    scale = torch.empty(n_features).uniform_(-1, 2, generator=g).exp()
    raw = offset + scale * torch.randn(total, n_features, generator=g)
    teacher = torch.randn(n_features, n_classes, generator=g)
    z = (raw - offset) / scale  # the teacher sees the columns on a common scale
    scores = z @ teacher + 0.5 * torch.randn(total, n_classes, generator=g)
    y = scores.argmax(dim=1)
    mean, std = raw[:n].mean(dim=0), raw[:n].std(dim=0)
    x = (raw - mean) / std
    stats = {"raw_mean": mean.tolist(), "raw_std": std.tolist()}
    return x[:n].contiguous(), y[:n].clone(), x[n:].contiguous(), y[n:].clone(), stats
