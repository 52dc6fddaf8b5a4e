"""The model zoo (`model.kind`): the GPT, an embedding followed by a linear head, and a deep
feed-forward ReLU network. Every model maps its input to logits (B, T, n_out)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minitrain.core.config import ModelConfig
from minitrain.core.model import GPT


class EmbedLinear(nn.Module):
    """A token's embedding row, then a linear layer to next-token logits: (B, T) -> (B, T, V)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, vocab_size)

    def forward(self, idx):
        return self.head(self.wte(idx))


class FeedForward(nn.Module):
    """Features -> n_layer hidden ReLU layers of width n_embd -> class logits (B, 1, C).

    Plain (the default): h = relu(W h + b), no residual, no normalisation. With `residual` each
    hidden layer adds to its input, with `layer_norm` it reads a LayerNorm of it (pre-LN).
    Weights are N(0, init_gain^2 * 2 / fan_in): at gain 1 a ReLU layer keeps the mean squared
    size of what passes through it, forwards and backwards; below 1 it shrinks, above 1 grows.
    """

    def __init__(self, cfg: ModelConfig, n_in: int, n_out: int):
        super().__init__()
        C = cfg.n_embd
        self.residual = cfg.residual
        self.inp = nn.Linear(n_in, C)
        self.layers = nn.ModuleList(nn.Linear(C, C) for _ in range(cfg.n_layer))
        self.norms = nn.ModuleList(nn.LayerNorm(C) if cfg.layer_norm else nn.Identity()
                                   for _ in range(cfg.n_layer))
        self.head = nn.Linear(C, n_out)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, cfg.init_gain * math.sqrt(2.0 / m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x, hidden: list | None = None):
        """x (B, F) -> logits (B, 1, C). `hidden`, when given, collects each hidden layer's
        output (B, C), input layer first: the layer probe differentiates the loss by them."""
        h = F.relu(self.inp(x))
        if hidden is not None:
            hidden.append(h)
        for layer, norm in zip(self.layers, self.norms):
            f = F.relu(layer(norm(h)))
            h = h + f if self.residual else f
            if hidden is not None:
                hidden.append(h)
        return self.head(h).unsqueeze(1)


def build(cfg: ModelConfig, n_in: int, n_out: int) -> nn.Module:
    if cfg.kind == "gpt":
        return GPT(cfg, n_out)
    if cfg.kind == "embed-linear":
        return EmbedLinear(cfg, n_out)
    return FeedForward(cfg, n_in, n_out)


def vocab_tables(model: nn.Module) -> dict[str, torch.Tensor]:
    """The matrices with one row per vocabulary entry: `wte` (input) and `head` (output, when it
    is its own matrix). MomentLog follows the tracked rows of these."""
    tables = {}
    if hasattr(model, "wte"):
        tables["wte"] = model.wte.weight
    head = getattr(model, "head", None)
    if isinstance(model, (GPT, EmbedLinear)) and head is not None \
            and head.weight is not tables.get("wte"):
        tables["head"] = head.weight
    return tables
