"""The training loop: one function, read top to bottom. Observers see each step's record."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import torch

from minitrain.core import checkpoint, datasets, optim, rundir, zoo
from minitrain.core import config as config_mod
from minitrain.core import dist as ddp
from minitrain.core.config import Config
from minitrain.core.data import IGNORE, Batch
from minitrain.core.model import token_losses
from minitrain.core.observe import (
    BatchLog,
    MetricsLog,
    MomentLog,
    Observer,
    PhaseLog,
    Progress,
    StepRecord,
    TokenLossLog,
    WholeSetLoss,
)
from minitrain.core.optim import lr_at, param_groups
from minitrain.core.precision import LossScaler, forward_pass
from minitrain.core.probes import ClassProbe, EmbeddingGeometry, LayerProbe
from minitrain.core.tokenizer import Tokenizer


def lab_probes(cfg: Config, ds: datasets.Dataset, model, out: Path,
               start: int) -> list[Observer]:
    """The extra observers of the synthetic kinds: class accuracy and probabilities for any
    classifier, the embedding's geometry for the toy model, per-layer gradients for the MLP."""
    if ds.names is None:
        return []
    t = cfg.train
    probes = [ClassProbe(out, model, ds.full, ds.names, t.eval_every, t.steps)]
    if cfg.model.kind == "embed-linear":
        probes.append(EmbeddingGeometry(out, model.wte.weight, ds.names))
    if cfg.model.kind == "mlp":
        probes.append(LayerProbe(out, model, ds.full, t.eval_every, t.steps, at_init=not start))
    return probes


class StopOnCtrlC:
    """The first Ctrl-C asks the loop to stop after the current step, so every log holds
    whole steps; a second one interrupts at once. Under torchrun every SIGINT only asks: a
    terminal's Ctrl-C reaches each rank twice (from the terminal, then forwarded by torchrun,
    which SIGKILLs ranks still running 30 s later)."""

    def __init__(self, second_interrupts: bool = True):
        self.requested, self._previous = False, None
        self.second_interrupts = second_interrupts

    def _handle(self, signum, frame):
        if self.requested and self.second_interrupts:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(cfg: Config, out: str | Path, progress: bool = True, replace: bool = False,
          resume: bool = False) -> dict:
    """Train per `cfg`, writing the run directory `out`; with `resume`, go on from the
    checkpoint in `out` instead. Returns the final summary."""
    t_start = time.perf_counter()
    dist = ddp.setup(cfg.train.device)  # before anything is written: cuda may be missing
    dev = dist.device
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    # on CUDA this also picks the attention backward's deterministic kernels (its defaults
    # are not); an op with no deterministic kernel would stop the run rather than drift
    torch.use_deterministic_algorithms(True)

    # data (corpus -> tokenizer -> encoded sentences, or a synthetic kind) -> model
    ds = datasets.build(cfg)
    model = zoo.build(cfg.model, ds.n_in, ds.n_out).to(dev)  # initialised on the CPU
    forward = forward_pass(model, dev, cfg.train)
    groups, names = param_groups(model, cfg.optimizer.weight_decay)
    o = cfg.optimizer
    opt = optim.build(o, groups)
    sampler = datasets.sampler(cfg, ds)
    tok = ds.tokenizer

    # the run directory: resolved config and tokenizer first, before step 0; rank 0 writes it
    writer = dist.rank == 0
    out = Path(out)
    if writer and not resume:
        out = rundir.prepare(out, replace)
        (out / rundir.CONFIG).write_text(config_mod.dump(cfg), encoding="utf-8")
        if tok is not None:
            tok.save(out / rundir.TOKENIZER)
    elif resume and tok is not None and \
            Tokenizer.load(out / rundir.TOKENIZER).hf.to_str() != tok.hf.to_str():
        raise checkpoint.CheckpointError(f"{out}: its tokenizer.json is not this corpus's BPE")
    summary = {
        "status": "running", "steps_completed": 0, "steps_planned": cfg.train.steps,
        "n_params": sum(p.numel() for p in model.parameters()), **ds.summary,
        "resumed_at_step": None, "world_size": dist.world, "device": dev.type,
    }
    sets = {"train_loss": ds.full.to(dev), "val_loss": ds.full_val.to(dev)}
    dense = 100 if cfg.train.eval_dense else 0
    evaluator = WholeSetLoss(forward, sets, cfg.train.steps, cfg.train.eval_every,
                             o.warmup_steps, dense=dense, dense_every=cfg.train.dense_every)
    parts = {"model": model, "optimizer": opt, "sampler": sampler, "evaluator": evaluator}
    scaler = LossScaler() if cfg.train.dtype == "float16" else None  # fp16's narrow range
    if scaler:
        parts["scaler"] = scaler
    start = 0
    if resume:
        start = checkpoint.load(out, parts)
        if writer:
            checkpoint.trim_logs(out, start)
        summary["resumed_at_step"] = start
        if writer:  # a run branched from another (minitrain.tools.branch) says so for good
            try:
                origin = json.loads((out / rundir.SUMMARY).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                origin = {}
            if isinstance(origin, dict) and origin.get("branched_from"):
                summary["branched_from"] = origin["branched_from"]
    if writer:
        rundir.write_json_atomic(out / rundir.SUMMARY, summary)
    observers = []
    if cfg.train.instrument and writer:
        observers = [evaluator, MetricsLog(out, opt.params),
                     BatchLog(out, ds.tracked, ds.pieces, ds.source_of)]
        if ds.source_of is not None:
            observers.append(PhaseLog(out, sampler))
        if "token_losses" in cfg.train.extra_logs:
            observers.append(TokenLossLog(out))
        if "moments" in cfg.train.extra_logs:
            observers.append(MomentLog(out, opt, names, zoo.vocab_tables(model), ds.pieces))
        observers += lab_probes(cfg, ds, model, out, start)
    if progress and writer:
        observers.append(Progress(cfg.train.steps, out.name, start))

    status, record, done = "completed", None, start  # done: steps whose records are written
    t_loop = time.perf_counter()
    step_s, tokens = 0.0, 0  # time in the training step proper, and tokens it scored
    try:
        with StopOnCtrlC(second_interrupts=dist.world == 1) as ctrl_c:
            for step in range(start, cfg.train.steps):
                t0 = time.perf_counter()
                # ---- the training step ----
                opt.lr = lr_at(step, o.lr, o.warmup_steps, cfg.train.steps, o.min_lr_ratio)
                ids = sampler.next_ids()  # the global batch; this process trains on its share
                batch = ds.batch(dist.shard(ids))  # on the CPU
                x, y = batch.x.to(dev, non_blocking=True), batch.y.to(dev, non_blocking=True)
                tl = token_losses(forward(x), y, IGNORE)  # (B, T)
                n_tokens = int(dist.total(int((batch.y != IGNORE).sum())))  # global batch
                loss = tl.sum() / n_tokens
                opt.zero_grad()
                (scaler.scaled(loss) if scaler else loss).backward()
                dist.reduce_grads(opt.params)  # summed over processes: the global gradient
                # fp16: unscale before the clip sees the gradient; an overflow drops the step
                finite = scaler.unscale_(opt.params) if scaler else True
                stats = opt.step(drop=not finite)  # clip, moments, update
                loss_scale = scaler.scale if scaler else None  # the scale this step used
                if scaler:
                    scaler.update(finite)
                batch_loss = dist.total(loss.item())
                sampler.observe(batch_loss)  # the mixer's bandit is rewarded by the loss
                step_ms = (time.perf_counter() - t0) * 1e3
                # ---- end of the step; what follows only observes ----
                step_s, tokens = step_s + step_ms / 1e3, tokens + n_tokens
                tl = tl.detach().cpu()  # the logs are written from the CPU
                rows = dist.gather_rows({"x": batch.x, "y": batch.y, "tl": tl},
                                        {"x": tok.pad_id if tok else 0, "y": IGNORE, "tl": 0.0})
                record = StepRecord(step, opt.lr, batch_loss, stats,
                                    Batch(ids, rows["x"], rows["y"]) if writer else batch,
                                    rows["tl"] if writer else tl, n_tokens, step_ms,
                                    loss_scale=loss_scale)
                for obs in observers:
                    obs.on_step(record)
                done = step + 1
                if writer and cfg.train.checkpoint_every and \
                        done % cfg.train.checkpoint_every == 0:
                    checkpoint.save(out, done, parts)
                # a non-finite gradient whose step was dropped (fp16 overflow, or the outlier
                # skip) is handled; anything else non-finite is the end of the run
                if not math.isfinite(record.loss) or \
                        not (math.isfinite(stats.grad_norm_pre_clip) or stats.skipped):
                    status = "diverged"
                    break
                if dist.any(ctrl_c.requested):  # every rank stops after the same step
                    status = "interrupted"
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; readers skip a cut-off line
        status = "interrupted"
    except Exception as e:  # out of GPU memory, say: the summary must not read "completed"
        status = "failed"
        first_line = (str(e).strip().splitlines() or [""])[0]
        name = type(e).__name__
        summary["error"] = (f"{name}: {first_line}" if first_line else name)[:300]
        raise
    finally:
        for obs in observers:
            obs.close()
        if writer and status == "interrupted" and done > start:
            checkpoint.save(out, done, parts)
        wall_s = time.perf_counter() - t_start
        summary.update({
            "status": status,
            "steps_completed": done,
            "diverged_at_step": done - 1 if status == "diverged" else None,
            "final_loss": record.loss if record else None,
            "final_train_loss": record.train_loss if record else None,
            "final_val_loss": record.val_loss if record else None,
            "wall_s": round(wall_s, 3),
            "train_step_tokens_per_s": round(tokens / step_s) if step_s else None,
            "loop_tokens_per_s": round(tokens / (time.perf_counter() - t_loop)),
        })
        if writer:
            rundir.write_json_atomic(out / rundir.SUMMARY, summary)
        dist.close()
    return summary
