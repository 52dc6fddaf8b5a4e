"""Data-parallel training across processes (torchrun + torch.distributed), and its one-process
stand-in, so the loop reads the same either way.

Every rank draws the same global batch from the same seeded sampler and trains on its share
(rows r, r + world, ...). The loss of a step is the sum over all ranks' scored tokens divided
by their total count, so the gradients, summed over ranks, are the one-process gradients of the
global batch; the clip then sees the global norm. Only rank 0 writes the run directory.
`train.device` picks where each process computes (under torchrun, cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as torch_dist

from minitrain.core.config import ConfigError


class Single:
    """One process: every collective is the identity."""

    rank, world = 0, 1

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")

    def shard(self, ids: list[int]) -> list[int]:
        return ids

    def total(self, x: float) -> float:
        return x

    def reduce_grads(self, params) -> None:
        pass

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any (Ctrl-C seen by some ranks only)."""
        return flag

    def gather_rows(self, rows: dict[str, torch.Tensor], fill: dict[str, float]):
        return rows

    def close(self) -> None:
        pass


class DataParallel(Single):
    def __init__(self, device: torch.device):
        super().__init__(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.rank, self.world = torch_dist.get_rank(), torch_dist.get_world_size()

    def shard(self, ids):
        return ids[self.rank::self.world]

    def total(self, x):
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return float(t)

    def any(self, flag):
        t = torch.tensor([int(flag)], device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t)

    def reduce_grads(self, params):
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])  # one collective for all tensors
        torch_dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_rows(self, rows, fill):
        """Rank 0 gets the global batch's (B, T) rows back in sampler order, each shard
        padded with `fill` to the longest; other ranks get None."""
        parts = [None] * self.world
        torch_dist.all_gather_object(parts, {k: v.detach().cpu().numpy() for k, v in rows.items()})
        if self.rank:
            return None
        out = {}
        for key in rows:
            width = max(p[key].shape[1] for p in parts)
            full = np.full((sum(len(p[key]) for p in parts), width), fill[key],
                           dtype=parts[0][key].dtype)
            for r, p in enumerate(parts):
                full[r::self.world, : p[key].shape[1]] = p[key]
            out[key] = torch.from_numpy(full)
        return out

    def close(self):
        torch_dist.destroy_process_group()


def pick_device(name: str) -> torch.device:
    """train.device -> this process's device (under torchrun, cuda:LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device: cuda, but torch {torch.__version__} sees no CUDA "
                          "device on this machine (use cpu or auto)")
    # cuBLAS is deterministic only with a fixed workspace; set before its first use
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def setup(device_name: str = "cpu") -> Single:
    """DataParallel under torchrun (WORLD_SIZE > 1), else Single; on train.device."""
    device = pick_device(device_name)
    return DataParallel(device) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else Single(device)
