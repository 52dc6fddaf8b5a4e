"""`train()`: set a run up (data, model, optimizer, run directory, resume), hand it to the loop
in `minitrain/loop.py`, and write the summary however the loop ends."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minitrain.core import background, checkpoint, datasets, memory, observe, optim, rundir, zoo
from minitrain.core import config as config_mod
from minitrain.core import dist as ddp
from minitrain.core.config import Config
from minitrain.core.evaluate import NoEvaluation, WeightCopy, WholeSetLoss, bounded
from minitrain.core.optim import param_groups
from minitrain.core.precision import LossScaler, NoScaler, deterministic, forward_pass
from minitrain.core.tokenizer import Tokenizer
from minitrain.loop import Loop


@dataclass
class Setup:
    """Everything the loop works on, built from the config (and the checkpoint on resume)."""
    dist: ddp.Single
    ds: datasets.Dataset
    model: torch.nn.Module
    forward: object
    opt: optim.Optimizer
    names: list[str]  # parameter names, in the optimizer's order
    sampler: object
    scaler: object
    evaluator: WholeSetLoss
    parts: dict  # what a checkpoint holds
    out: Path
    writer: bool  # rank 0 writes the run directory
    start: int
    summary: dict
    lock: object = None  # the run directory's lock, held until finish


def setup(cfg: Config, out: str | Path, replace: bool, resume: bool) -> Setup:
    dist = ddp.setup(cfg.train.device)  # before anything is written: cuda may be missing
    if cfg.data.pack and dist.world > 1:  # the batch log's spans are gathered per sentence
        raise config_mod.ConfigError("data.pack: packed rows train in one process only "
                                     f"(this run has {dist.world})")
    dev = dist.device
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    deterministic(compiled=cfg.train.compile)

    # data (corpus -> tokenizer -> encoded sentences, or a synthetic kind) -> model
    ds = datasets.build(cfg)
    row_len = max(ds.full.x.shape[1] if ds.full.x.dim() == 2 else 1, ds.row_len)  # longest row
    memory.check(cfg, ds.n_in, ds.n_out, row_len, dev)  # before the model is allocated
    model = zoo.build(cfg.model, ds.n_in, ds.n_out).to(dev)  # initialised on the CPU
    forward = forward_pass(model, dev, cfg.train)
    groups, names = param_groups(model, cfg.optimizer.weight_decay)
    opt = optim.build(cfg.optimizer, groups)
    sampler = datasets.sampler(cfg, ds)

    # the run directory: resolved config and tokenizer first, before step 0; rank 0 writes it
    writer, out = dist.rank == 0, Path(out)
    held = rundir.lock(out) if writer else None  # one run at a time writes a directory
    if writer and not resume:
        out = rundir.prepare(out, replace)
        (out / rundir.CONFIG).write_text(config_mod.dump(cfg), encoding="utf-8")
        if ds.tokenizer is not None:
            ds.tokenizer.save(out / rundir.TOKENIZER)
    elif resume:
        same_tokenizer(out, ds.tokenizer)
    summary = {
        "status": "running", "steps_completed": 0, "steps_planned": cfg.train.steps,
        "n_params": sum(p.numel() for p in model.parameters()), **ds.summary,
        "resumed_at_step": None, "world_size": dist.world, "device": dev.type,
    }
    t, o = cfg.train, cfg.optimizer
    sets, shares = bounded({"train_loss": ds.full, "val_loss": ds.full_val}, t.eval_max_rows,
                           cfg.seed)
    sets = {field: b.to(dev) for field, b in sets.items()}
    if shares:  # the "whole-set" losses are a subset's: the summary says which share
        summary["whole_set_subset"] = shares
    arrival = cfg.data.arrive_step if cfg.data.sampler.startswith("arrival") else None
    rare_ids = ds.rare_ids()
    rare = {"train_loss": torch.tensor([i in rare_ids for i in sets["train_loss"].sentence_ids],
                                       dtype=torch.bool)}
    evaluator = WholeSetLoss(forward, sets, t.steps, t.eval_every, o.warmup_steps,
                             dense=100 if t.eval_dense else 0, dense_every=t.dense_every,
                             dense_at=arrival, rare=rare)
    parts = {"model": model, "optimizer": opt, "sampler": sampler, "evaluator": evaluator}
    scaler = LossScaler() if t.dtype == "float16" else NoScaler()  # fp16's narrow range
    if t.dtype == "float16":
        parts["scaler"] = scaler
    start = 0
    if resume:
        start = summary["resumed_at_step"] = checkpoint.load(out, parts)
        if start >= cfg.train.steps:
            raise checkpoint.CheckpointError(f"{out}: already trained all {start} steps; "
                                             "nothing to resume")
        if writer:
            checkpoint.trim_logs(out, start)
            summary.update(branch_history(out))
    if writer:
        rundir.write_json_atomic(out / rundir.SUMMARY, summary)
    return Setup(dist, ds, model, forward, opt, names, sampler, scaler, evaluator, parts, out,
                 writer, start, summary, held)


def same_tokenizer(out: Path, tok: Tokenizer | None) -> None:
    """A resumed run must encode its corpus as the run directory's tokenizer did."""
    if tok is not None and Tokenizer.load(out / rundir.TOKENIZER).hf.to_str() != tok.hf.to_str():
        raise checkpoint.CheckpointError(f"{out}: its tokenizer.json is not this corpus's BPE")


def branch_history(out: Path) -> dict:
    """A run branched from another (minitrain.tools.branch) says so for good."""
    try:
        origin = json.loads((out / rundir.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if isinstance(origin, dict) and origin.get("branched_from"):
        return {"branched_from": origin["branched_from"]}
    return {}


def train(cfg: Config, out: str | Path, progress: bool = True, replace: bool = False,
          resume: bool = False) -> dict:
    """Train per `cfg`, writing the run directory `out`; with `resume`, go on from the
    checkpoint in `out` instead. Returns the final summary."""
    t_start = time.perf_counter()
    s = setup(cfg, out, replace, resume)
    observers = observe.build(cfg, s.out, s.ds, s.model, s.opt, s.names, s.sampler, s.start,
                              split=s.evaluator.split,
                              progress=progress, writer=s.writer)
    t = cfg.train
    instrumented = t.instrument and s.writer
    # the whole-set evaluation on a second thread, on a twin of the model
    threaded = instrumented and background.wanted(t, s.dist.device.type)
    twin = WeightCopy(s.model, lambda m: forward_pass(m, s.dist.device, t)) if threaded else None
    worker = background.build(threaded)
    loop = Loop(cfg, s.ds, s.forward, s.opt, s.sampler, s.dist, s.scaler,
                s.evaluator if instrumented else NoEvaluation(), observers, s.parts, s.out,
                s.writer, s.start, worker, twin)
    status, t_loop = "failed", time.perf_counter()
    try:
        status = loop.run()
    except Exception as e:  # out of GPU memory, say: the summary must not read "completed"
        first_line = (str(e).strip().splitlines() or [""])[0]
        name = type(e).__name__
        s.summary["error"] = (f"{name}: {first_line}" if first_line else name)[:300]
        raise
    finally:
        finish(s, loop, observers, status, t_start, t_loop)
    return s.summary


def finish(s: Setup, loop: Loop, observers, status: str, t_start: float, t_loop: float):
    """Close the logs, checkpoint an interrupted run, write the summary."""
    for obs in observers:
        obs.close()
    if s.writer and status == "interrupted" and loop.done > s.start:
        checkpoint.save(s.out, loop.done, s.parts)
    r = loop.written
    s.summary.update({
        "status": status,
        "steps_completed": loop.logged,  # = loop.done unless writing the logs failed
        "diverged_at_step": loop.done - 1 if status == "diverged" else None,
        "final_loss": r.loss if r else None,
        "final_train_loss": r.train_loss if r else None,
        "final_val_loss": r.val_loss if r else None,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "train_step_tokens_per_s": round(loop.tokens / loop.step_s) if loop.step_s else None,
        "loop_tokens_per_s": round(loop.tokens / (time.perf_counter() - t_loop)),
    })
    if s.writer:
        rundir.write_json_atomic(s.out / rundir.SUMMARY, s.summary)
    if s.lock is not None:
        s.lock.close()
    s.dist.close()
