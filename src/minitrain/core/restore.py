"""A run brought back at its checkpoint, to replay a step without training: the model,
optimizer, data and batch stream it trained with. Read-only: nothing in the run changes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from minitrain.core import checkpoint, datasets, optim, rundir, zoo
from minitrain.core.config import from_dict
from minitrain.core.data import IGNORE
from minitrain.core.model import token_losses
from minitrain.core.optim import param_groups


class Restored:
    """The model, optimizer and data of the run at `path`, restored at its checkpoint; `step`
    is the checkpoint's, `names` the parameter tensors in the optimizer's order."""

    def __init__(self, path: Path):
        self.run = rundir.load_run(path)
        cfg = from_dict(self.run.config, str(path / rundir.CONFIG))
        self.ds = datasets.build(cfg)  # the same data the run trained on
        torch.manual_seed(cfg.seed)
        self.model = zoo.build(cfg.model, self.ds.n_in, self.ds.n_out)
        groups, self.names = param_groups(self.model, cfg.optimizer.weight_decay)
        self.opt = optim.build(cfg.optimizer, groups)
        self.sampler = datasets.sampler(cfg, self.ds)  # the run's own batch stream
        self.step = checkpoint.load(path, {"model": self.model, "optimizer": self.opt,
                                           "sampler": self.sampler})

    def grads(self, ids: list[int]) -> list[torch.Tensor]:
        """The raw gradient of every parameter tensor on the batch of sentences `ids`."""
        batch = self.ds.batch(ids)
        self.opt.zero_grad()
        tl = token_losses(self.model(batch.x), batch.y, IGNORE)
        (tl.sum() / (batch.y != IGNORE).sum()).backward()
        return [p.grad.detach().clone() for p in self.opt.params]

    def update_norms(self, grads: list[torch.Tensor]) -> np.ndarray:
        """Per-tensor L2 norm of the update the optimizer would make with `grads`, unclipped
        (on a copy: the restored state is untouched)."""
        opt = copy.deepcopy(self.opt)
        opt.grad_clip, opt.guard = None, optim.NormGuard()
        before = [p.detach().clone() for p in opt.params]
        for p, g in zip(opt.params, grads):
            p.grad = g
        opt.step()
        return np.array([float((p.detach() - b).norm()) for p, b in zip(opt.params, before)])


def restore(path: str | Path) -> Restored:
    return Restored(Path(path))


def final_model(path: str | Path) -> tuple[torch.nn.Module, int]:
    """A corpus run's GPT with the weights of its checkpoint, and the checkpoint's step; only
    the model is built (no data, no optimizer), in eval mode."""
    path = Path(path)
    run = rundir.load_run(path)
    cfg = from_dict(run.config, str(path / rundir.CONFIG))
    if cfg.model.kind != "gpt":
        raise rundir.RunDirError(f"{path}: model.kind {cfg.model.kind}: only a GPT writes text")
    vocab = run.summary.get("vocab_size") or run.tokenizer().vocab_size
    model = zoo.build(cfg.model, vocab, vocab)
    state = checkpoint.read(path)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise checkpoint.CheckpointError(f"{path / checkpoint.FILE}: does not fit this run's "
                                         f"model ({str(e)[:120]})") from None
    return model.eval(), int(state["step"])
