"""`just bench`: minitrain's speed against a plain-PyTorch reference, on the same model,
batches and seed, in one process. Writes bench/results.md and bench/results.json.

Measured (medians over `--repeats`):
1. loop tokens/s: minitrain with full instrumentation (logs + whole-set loss every 25 steps and
   densely after a norm jump), with the logs only (whole-set loss at the first and last step),
   with none, and a reference loop of plain PyTorch (torch.optim.AdamW(foreach=True) +
   clip_grad_norm_, no logging). `instrumentation_cost_*` is the share of the instrumented
   loop's time that the instrumentation adds: 1 - (tokens/s with it) / (tokens/s off).
   The logs-only run still evaluates the whole sets twice, a fixed cost per run (its share
   falls as runs get longer), so that figure is also split in two, measured in the same runs:
   `whole_set_eval_ms` (one evaluation of the train and val sets, timed around the
   evaluator's `on_step`, whose per-step bookkeeping, a median of 50 norms, is counted with
   it), `logs_only_eval_share` (the share of the logs-only loop spent in its two
   evaluations) and `instrumentation_cost_per_step_logs` (the per-step logs alone: the
   logs-only loop with its evaluations' time taken out, against the loop with none).
   `instrumentation_cost_logs_only` keeps its meaning: both parts together. Those are
   differences between runs, and on a shared machine they move by several points from one
   `just bench` to the next; `per_step_logs_share_timed` is steadier: the time spent inside
   the per-step writers' `on_step` (metrics, batches, phases, token losses, moments), timed in
   the logs-only runs themselves, as a share of their loop (it leaves out what the writers
   cost the training step around them, such as caches they evict);
2. the optimizer step alone: our AdamW (clip included) against torch's foreach AdamW + clip;
3. model FLOPs utilisation against this machine's measured matmul rate in the model's dtype
   (fp32, or bf16 for a bf16 config), and peak memory (the process's RSS; on CUDA, the GPU
   memory each model's runs allocated at most).
`--device cuda` runs it all on the GPU (results-cuda.md/.json beside the CPU files). The
models are the entries of bench/models.yaml; `--models A,B` picks some, those marked `gpu`
included. On CUDA the loop synchronises every step anyway (the loss is read back), so host
clocks time it.
Benchmarks, not tests: the suite only checks that this runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from minitrain.core import config
from minitrain.core import dist as ddp
from minitrain.core.corpus import read_sentences
from minitrain.core.data import IGNORE, Sampler, encode_corpus, make_batch
from minitrain.core.evaluate import WholeSetLoss
from minitrain.core.model import GPT, token_losses
from minitrain.core.observe import (
    BatchLog,
    MetricsLog,
    MomentLog,
    PhaseLog,
    TokenLossLog,
)
from minitrain.core.optim import AdamW, param_groups
from minitrain.core.precision import forward_pass
from minitrain.core.rundir import METRICS, read_jsonl
from minitrain.core.tokenizer import Tokenizer
from minitrain.core.train import train

MODELS_FILE = "bench/models.yaml"  # name: {config, set, gpu}: what the bench measures


def load_models(path: str | Path = MODELS_FILE) -> dict[str, tuple[str, list[str], bool]]:
    """The benchmark's models: name -> (config file, overrides, GPU only)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise config.ConfigError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) and "config" in v
                                            for v in raw.values()):
        raise config.ConfigError(f"{path}: expected name: {{config: FILE, set: [...]}} entries")
    return {name: (v["config"], list(v.get("set", [])), bool(v.get("gpu", False)))
            for name, v in raw.items()}


MODELS = load_models() if Path(MODELS_FILE).is_file() else {}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cfg(model: str, steps: int, device: str, extra: tuple[str, ...] = ()):
    path, overrides, _ = MODELS[model]
    return config.load(path, [*overrides, f"train.steps={steps}", "data.sampler=random",
                              f"train.device={device}", *extra])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_loop(cfg) -> tuple[float, float]:
    """Plain PyTorch on the same data, model, seed, device and dtype, with torch's default
    (non-deterministic) algorithms: tokens/s of the loop, and the mean padded row length of
    its batches (for the FLOP count)."""
    dev = ddp.pick_device(cfg.train.device)
    torch.manual_seed(cfg.seed)
    sentences = read_sentences(cfg.data.train)
    tok = Tokenizer.train(sentences, cfg.data.vocab_size)
    enc = encode_corpus(tok, sentences, cfg.model.block_size, cfg.data.train)
    model = GPT(cfg.model, tok.vocab_size).to(dev)
    forward = forward_pass(model, dev, cfg.train)  # the config's dtype and compile
    groups, _ = param_groups(model, cfg.optimizer.weight_decay)
    o = cfg.optimizer
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, foreach=True)
    sampler = Sampler(len(enc), cfg.data.batch_size, "random", cfg.seed)
    deterministic = torch.are_deterministic_algorithms_enabled()  # train() turns it on
    torch.use_deterministic_algorithms(False)
    tokens, positions, t0 = 0, 0, time.perf_counter()
    for _ in range(cfg.train.steps):
        b = make_batch(enc, sampler.next_ids(), tok.pad_id)
        x, y = b.x.to(dev), b.y.to(dev)
        tl = token_losses(forward(x), y, IGNORE)
        n = int((b.y != IGNORE).sum())
        loss = tl.sum() / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip or float("inf"))
        opt.step()
        tokens, positions = tokens + n, positions + b.x.shape[1]
    _sync(dev)
    seconds = time.perf_counter() - t0
    torch.use_deterministic_algorithms(deterministic)
    return tokens / seconds, positions / cfg.train.steps


PER_STEP_LOGS = (MetricsLog, BatchLog, PhaseLog, TokenLossLog, MomentLog)


@contextmanager
def stopwatch(classes: tuple[type, ...], method: str):
    """Seconds spent in `method` of any of `classes` while the block runs: bench-side
    wrappers, put back on exit; the training code is not changed."""
    spent, originals = [0.0], {cls: getattr(cls, method) for cls in classes}

    def timer(original):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0
        return timed
    for cls, original in originals.items():
        setattr(cls, method, timer(original))
    try:
        yield spent
    finally:
        for cls, original in originals.items():
            setattr(cls, method, original)


def minitrain_loop(cfg, instrument: bool, whole_set_eval: bool = True) -> dict:
    """tokens/s of the loop, and (instrumented runs) the shares of its time the whole-set
    evaluations and the per-step writers took."""
    cfg.train.instrument = instrument
    cfg.train.eval_dense = whole_set_eval
    cfg.train.eval_every = 25 if whole_set_eval else cfg.train.steps
    with tempfile.TemporaryDirectory() as d, stopwatch((WholeSetLoss,), "losses") as eval_s, \
            stopwatch(PER_STEP_LOGS, "on_step") as logs_s:
        run = Path(d) / "run"
        tokens_per_s = train(cfg, run, progress=False)["loop_tokens_per_s"]
        tokens = sum(r["tokens"] for r in read_jsonl(run / METRICS)) if instrument else 0
    loop_s = tokens / tokens_per_s  # the loop's seconds
    return {"tokens_per_s": tokens_per_s, "eval_s": eval_s[0],
            "eval_share": eval_s[0] / loop_s if tokens else 0.0,
            "logs_share": logs_s[0] / loop_s if tokens else 0.0}


def optimizer_step(cfg, repeats: int, steps: int = 200) -> dict:
    """Seconds per step of the two optimizers on the model's parameters, fixed gradients."""
    torch.manual_seed(0)
    dev = ddp.pick_device(cfg.train.device)
    out = {}
    for name in ("minitrain", "torch"):
        model = GPT(cfg.model, cfg.data.vocab_size).to(dev)
        groups, _ = param_groups(model, 0.1)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        if name == "minitrain":
            opt = AdamW(groups, lr=1e-3, betas=(0.9, 0.95), grad_clip=1.0)

            def step(opt=opt):
                opt.step()
        else:
            opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), foreach=True)
            params = list(model.parameters())

            def step(opt=opt, params=params):
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
                opt.step()
        times = []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(dev)
            times.append((time.perf_counter() - t0) / steps)
        out[name] = statistics.median(times)
    return out


def matmul_flops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """This machine's matrix-product rate (FLOP/s) in `dtype`, on random data. fp32 on CUDA is
    true fp32 (torch leaves TF32 off for matmuls unless asked)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - t0) / 10)
    return 2 * n**3 / statistics.median(times)


def flops_per_token(cfg, n_params: int, seq_len: float) -> float:
    """6 N for the matmuls of forward + backward, plus the attention scores over the rows'
    padded length `seq_len` (nanoGPT's estimate, with the length the batches really have)."""
    L, C = cfg.model.n_layer, cfg.model.n_embd
    return 6 * n_params + 12 * L * C * seq_len


def run(repeats: int, steps: int, out_dir: Path, device: str = "cpu",
        models: tuple[str, ...] | None = None, overrides: tuple[str, ...] = ()
        ) -> dict:
    if models is None:  # every model of bench/models.yaml that runs on any machine
        models = tuple(name for name, (_, _, gpu) in MODELS.items() if not gpu)
    threads = torch.get_num_threads()
    dev = ddp.pick_device(device)
    cfgs = {name: _cfg(name, steps, device, overrides) for name in models}
    peaks = {d: matmul_flops(dev, DTYPES[d]) for d in sorted({c.train.dtype
                                                              for c in cfgs.values()})}
    rows = {}
    for name, cfg in cfgs.items():
        torch.set_num_threads(threads)
        cfg.train.threads = threads
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        full = statistics.median(minitrain_loop(cfg, True)["tokens_per_s"]
                                 for _ in range(repeats))
        logs_runs = [minitrain_loop(cfg, True, False) for _ in range(repeats)]
        logs = statistics.median(r["tokens_per_s"] for r in logs_runs)
        # the same runs with their two evaluations' time taken out of the loop
        per_step = statistics.median(r["tokens_per_s"] / (1 - r["eval_share"]) for r in logs_runs)
        eval_share = statistics.median(r["eval_share"] for r in logs_runs)
        eval_ms = statistics.median(r["eval_s"] / 2 * 1e3 for r in logs_runs)
        logs_share = statistics.median(r["logs_share"] for r in logs_runs)
        off = statistics.median(minitrain_loop(cfg, False)["tokens_per_s"]
                                for _ in range(repeats))
        refs = [reference_loop(cfg) for _ in range(repeats)]
        ref, seq_len = statistics.median(r[0] for r in refs), refs[0][1]
        opt = optimizer_step(cfg, repeats)
        n_params = sum(p.numel() for p in GPT(cfg.model, cfg.data.vocab_size).parameters())
        rows[name] = {
            "n_params": n_params, "batch_size": cfg.data.batch_size,
            "tokens_per_s_full": round(full), "tokens_per_s_logs_only": round(logs),
            "tokens_per_s_off": round(off), "tokens_per_s_reference": round(ref),
            "full_over_reference": round(full / ref, 3),
            "logs_only_over_reference": round(logs / ref, 3),
            "instrumentation_cost_full": round(1 - full / off, 3),
            "instrumentation_cost_logs_only": round(1 - logs / off, 3),
            "whole_set_eval_ms": round(eval_ms, 1),
            "logs_only_eval_share": round(eval_share, 3),
            "instrumentation_cost_per_step_logs": round(1 - per_step / off, 3),
            "per_step_logs_share_timed": round(logs_share, 3),
            "adamw_step_ms": round(opt["minitrain"] * 1e3, 4),
            "torch_adamw_step_ms": round(opt["torch"] * 1e3, 4),
            "adamw_over_torch": round(opt["minitrain"] / opt["torch"], 3),
            "dtype": cfg.train.dtype, "mean_row_length": round(seq_len, 1),
            "mfu_off": round(off * flops_per_token(cfg, n_params, seq_len)
                             / peaks[cfg.train.dtype], 4),
        }
        if dev.type == "cuda":
            rows[name]["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
    result = {"machine": platform.platform(), "processor": platform.processor() or "unknown",
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": threads, "repeats": repeats,
              "steps_per_run": steps, "overrides": list(overrides),
              **{f"matmul_gflops_{d}": round(p / 1e9, 1) for d, p in peaks.items()},
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "models": rows}
    stem = "results" if dev.type == "cpu" else "results-cuda"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    peaks = "; ".join(f"{k.removeprefix('matmul_gflops_')} matmul {v} GFLOP/s"
                      for k, v in r.items() if k.startswith("matmul_gflops_"))
    head = (f"# Benchmark\n\n{r['machine']}, {r['device']}, torch {r['torch']}, "
            f"{r['threads']} threads, median of {r['repeats']} runs of {r['steps_per_run']} "
            f"steps; {peaks}; peak RSS {r['peak_rss_mb']} MB."
            + (f" Overrides: `{' '.join(r['overrides'])}`." if r["overrides"] else "")
            + "\n\n")
    keys = list(next(iter(r["models"].values())))
    lines = ["| | " + " | ".join(r["models"]) + " |", "|---|" + "---:|" * len(r["models"])]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(str(m[k]) for m in r["models"].values()) + " |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitrain.tools.bench")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--out", default="bench")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--models", default=None,
                   help=f"comma-separated, of: {', '.join(MODELS)} (bench/models.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every model (repeatable)")
    a = p.parse_args(argv)
    models = tuple(a.models.split(",")) if a.models else None
    unknown = [m for m in models or () if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    try:
        result = run(a.repeats, a.steps, Path(a.out), a.device, models, tuple(a.set))
    except config.ConfigError as e:  # --device cuda where torch sees none
        p.exit(2, f"minitrain.tools.bench: error: {e}\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
