"""The training loop: one function, read top to bottom. Observers see each step's record."""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path

import torch

from minitrain import checkpoint, rundir
from minitrain import config as config_mod
from minitrain import dist as ddp
from minitrain.config import Config
from minitrain.corpus import read_sentences, sentences_with
from minitrain.data import IGNORE, Batch, Sampler, encode_corpus, make_batch
from minitrain.model import GPT, token_losses
from minitrain.observe import (
    BatchLog,
    MetricsLog,
    MomentLog,
    Progress,
    StepRecord,
    TokenLossLog,
    WholeSetLoss,
)
from minitrain.optim import AdamW, lr_at
from minitrain.tokenizer import Tokenizer, exclusive_pieces


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Decay matrices (embeddings included); leave LayerNorm gains and biases alone."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2]
    rest = [p for n, p in named if p.dim() < 2]
    names = [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}], names


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


def forward_pass(model: torch.nn.Module, device: torch.device, train_cfg):
    """The model's forward as configured (compiled or not; bf16 autocast or fp32), returning
    fp32 logits so the losses, the logs and the optimizer stay in fp32."""
    fwd = torch.compile(model) if train_cfg.compile else model
    bf16 = train_cfg.dtype == "bfloat16"

    def forward(idx):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return fwd(idx).float()  # (B, T, V); a no-op in fp32
    return forward


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
    # on CUDA some kernels have no deterministic variant: warn there rather than stop
    torch.use_deterministic_algorithms(True, warn_only=dev.type == "cuda")

    # corpus -> tokenizer -> encoded sentences
    sentences, val_sentences = read_sentences(cfg.data.train), read_sentences(cfg.data.val)
    tok = Tokenizer.train(sentences, cfg.data.vocab_size)
    enc = encode_corpus(tok, sentences, cfg.model.block_size, cfg.data.train)
    enc_val = encode_corpus(tok, val_sentences, cfg.model.block_size, cfg.data.val)
    tracked_sentences = {w: set(sentences_with(sentences, w)) for w in cfg.data.tracked_words}
    pieces_of = {w: exclusive_pieces(tok, sentences, w) for w in cfg.data.tracked_words}
    tracked_pieces = {tok.piece(p): p for ps in pieces_of.values() for p in ps}
    rare_ids = set().union(*tracked_sentences.values()) if tracked_sentences else set()

    model = GPT(cfg.model, tok.vocab_size).to(dev)  # initialised on the CPU: same weights
    forward = forward_pass(model, dev, cfg.train)
    groups, names = param_groups(model, cfg.optimizer.weight_decay)
    o = cfg.optimizer
    opt = AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, grad_clip=o.grad_clip)
    sampler = Sampler(len(enc), cfg.data.batch_size, cfg.data.sampler, cfg.seed, rare_ids,
                      cfg.data.arrive_step, cfg.data.arrive_gap)
    full = make_batch(enc, list(range(len(enc))), tok.pad_id).to(dev)
    full_val = make_batch(enc_val, list(range(len(enc_val))), tok.pad_id).to(dev)

    # the run directory: resolved config and tokenizer first, before step 0; rank 0 writes it
    writer = dist.rank == 0
    out = Path(out)
    if writer and not resume:
        out = rundir.prepare(out, replace)
        (out / rundir.CONFIG).write_text(config_mod.dump(cfg), encoding="utf-8")
        tok.save(out / rundir.TOKENIZER)
    elif resume and Tokenizer.load(out / rundir.TOKENIZER).hf.to_str() != tok.hf.to_str():
        raise checkpoint.CheckpointError(f"{out}: its tokenizer.json is not this corpus's BPE")
    summary = {
        "status": "running", "steps_completed": 0, "steps_planned": cfg.train.steps,
        "n_params": sum(p.numel() for p in model.parameters()), "vocab_size": tok.vocab_size,
        "tracked_pieces": {w: [tok.piece(p) for p in ps] for w, ps in pieces_of.items()},
        "tracked_sentences": {w: sorted(s) for w, s in tracked_sentences.items()},
        "resumed_at_step": None, "world_size": dist.world, "device": dev.type,
    }
    sets = {"train_loss": full, "val_loss": full_val}
    tables = {"wte": model.wte.weight}
    if not cfg.model.tie_weights:
        tables["head"] = model.head.weight
    dense = 100 if cfg.train.eval_dense else 0
    evaluator = WholeSetLoss(forward, sets, cfg.train.steps, cfg.train.eval_every,
                             o.warmup_steps, dense=dense)
    parts = {"model": model, "optimizer": opt, "sampler": sampler, "evaluator": evaluator}
    start = 0
    if resume:
        start = checkpoint.load(out, parts)
        if writer:
            checkpoint.trim_logs(out, start)
        summary["resumed_at_step"] = start
    if writer:
        rundir.write_json_atomic(out / rundir.SUMMARY, summary)
    observers = [evaluator,
                 MetricsLog(out, opt.params), BatchLog(out, tracked_sentences, tracked_pieces),
                 TokenLossLog(out), MomentLog(out, opt, names, tables, tracked_pieces),
                 ] if cfg.train.instrument and writer else []
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
                batch = make_batch(enc, dist.shard(ids), tok.pad_id)  # on the CPU
                x, y = batch.x.to(dev, non_blocking=True), batch.y.to(dev, non_blocking=True)
                tl = token_losses(forward(x), y, IGNORE)  # (B, T)
                n_tokens = int(dist.total(int((batch.y != IGNORE).sum())))  # global batch
                loss = tl.sum() / n_tokens
                opt.zero_grad()
                loss.backward()
                dist.reduce_grads(opt.params)  # summed over processes: the global gradient
                stats = opt.step()  # clip, moments, update
                step_ms = (time.perf_counter() - t0) * 1e3
                # ---- end of the step; what follows only observes ----
                step_s, tokens = step_s + step_ms / 1e3, tokens + n_tokens
                tl = tl.detach().cpu()  # the logs are written from the CPU
                rows = dist.gather_rows({"x": batch.x, "y": batch.y, "tl": tl},
                                        {"x": tok.pad_id, "y": IGNORE, "tl": 0.0})
                record = StepRecord(step, opt.lr, dist.total(loss.item()), stats,
                                    Batch(ids, rows["x"], rows["y"]) if writer else batch,
                                    rows["tl"] if writer else tl, n_tokens, step_ms)
                for obs in observers:
                    obs.on_step(record)
                done = step + 1
                if writer and cfg.train.checkpoint_every and \
                        done % cfg.train.checkpoint_every == 0:
                    checkpoint.save(out, done, parts)
                if not (math.isfinite(record.loss) and math.isfinite(stats.grad_norm_pre_clip)):
                    status = "diverged"
                    break
                if dist.any(ctrl_c.requested):  # every rank stops after the same step
                    status = "interrupted"
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; readers skip a cut-off line
        status = "interrupted"
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
