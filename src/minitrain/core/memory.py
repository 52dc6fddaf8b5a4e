"""Will the run fit? An estimate of the memory a config needs, made before anything is
allocated, against what the device has free: a config far too big gets one line naming the
keys to change instead of an allocator's traceback (or a machine swapping for an hour)."""

from __future__ import annotations

import torch

from minitrain.core.config import Config, ConfigError

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STATE = 8  # fp32 tensors per parameter: weight, grad, m, v, clipped copy, update, denom, spare


def parameters(cfg: Config, n_in: int, n_out: int) -> int:
    """The parameter count of the model a config builds (zoo.build), without building it."""
    m, C, L = cfg.model, cfg.model.n_embd, cfg.model.n_layer
    if m.kind == "mlp":
        norms = 2 * L * C if m.layer_norm else 0
        return n_in * C + C + L * (C * C + C) + norms + C * n_out + n_out
    if m.kind == "embed-linear":
        return n_out * C + C * n_out + n_out
    block = 12 * C * C + 13 * C  # attention and MLP weights, biases and two LayerNorms
    head = 0 if m.tie_weights else C * n_out
    return n_out * C + m.block_size * C + L * block + 2 * C + head


def activations(cfg: Config, n_out: int, row_len: int) -> int:
    """Bytes the forward and backward passes of one batch hold at most (an upper estimate);
    `row_len`: the longest row the data has (a sentence, padded to its batch's longest)."""
    m, B, T = cfg.model, cfg.data.batch_size, min(row_len, cfg.model.block_size)
    width = BYTES.get(cfg.train.dtype, 4)
    if m.kind == "gpt":
        per_layer = B * T * (16 * m.n_embd) + B * m.n_head * T * T * 3
        return width * (m.n_layer * per_layer + 3 * B * T * n_out)
    return width * B * T * (m.n_layer + 2) * max(m.n_embd, n_out) * 3


def free_bytes(device: torch.device) -> int | None:
    """What the device has free now; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check(cfg: Config, n_in: int, n_out: int, row_len: int, device: torch.device) -> None:
    """Raise ConfigError when the run clearly cannot fit (more than the free memory)."""
    free = free_bytes(device)
    if free is None:
        return
    state = STATE * 4 * parameters(cfg, n_in, n_out)
    acts = activations(cfg, n_out, row_len)
    if state + acts <= free:
        return
    keys = "the model (model.n_embd, model.n_layer, model.block_size, data.vocab_size)" \
        if state >= acts else "the batch (data.batch_size, model.block_size, model.n_layer)"
    gib = 2.0**30
    raise ConfigError(f"the run needs about {(state + acts) / gib:.3g} GiB ({state / gib:.3g} "
                      f"for the weights and optimizer state, {acts / gib:.3g} for one batch's "
                      f"activations), more than the {free / gib:.3g} GiB free on "
                      f"{device.type}: lower {keys}")
