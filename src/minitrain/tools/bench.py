"""`just bench`: minitrain's speed against a plain-PyTorch reference, on the same model,
batches and seed, in one process. Writes bench/results.md and bench/results.json.

Measured (medians over `--repeats`, the four loops of a repeat run one after another so that a
machine's drift reaches all four alike):
1. loop tokens/s: minitrain with full instrumentation (the per-step logs, and the whole-set
   losses every 25 steps and densely after a norm jump), with the per-step logs only (metrics,
   batches, token losses, moments: no whole-set loss), with none, and a reference loop of plain
   PyTorch (torch.optim.AdamW(foreach=True) + clip_grad_norm_, no logging) on the same batches
   (`datasets`: padded sentences, or packed rows). `per_step_logs_cost` is 1 - logs/off,
   `whole_set_eval_cost` 1 - full/logs: the share of the loop's time each adds.
   `whole_set_eval_ms` is one evaluation of the train and val sets, timed alone;
2. the optimizer step alone: our AdamW (clip included) against torch's foreach AdamW + clip;
3. model FLOPs utilisation against this machine's measured matmul rate in the model's dtype
   (fp32, or bf16 for a bf16 config), and peak memory (the process's RSS; on CUDA, the GPU
   memory each model's runs allocated at most).
The training loops run at `--threads` intra-op threads (default 1, the exercises' setting),
and minitrain evaluates the whole-set losses on a second thread when a core is left for it
(`train.log_thread`; `log_thread` in the table); the reference gets every core
(`reference_threads`), so both use the same cores.
`--device cuda` runs it all on the GPU (results-cuda.md/.json beside the CPU files). The
models are the entries of bench/models.yaml; `--models A,B` picks some, those marked `gpu`
included. On CUDA the loop synchronises every step anyway (the loss is read back), so host
clocks time it.
Benchmarks, not tests: the suite only checks that this runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import yaml

from minitrain.core import background, config, datasets
from minitrain.core import dist as ddp
from minitrain.core.data import IGNORE
from minitrain.core.evaluate import WholeSetLoss
from minitrain.core.model import GPT, token_losses
from minitrain.core.optim import AdamW, param_groups
from minitrain.core.precision import forward_pass
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


def reference_loop(cfg, threads: int) -> tuple[float, float]:
    """Plain PyTorch on the same batches, model, seed, device and dtype, with torch's default
    (non-deterministic) algorithms, at `threads` intra-op threads: tokens/s of the loop, and
    the mean row length of its batches (for the FLOP count)."""
    dev = ddp.pick_device(cfg.train.device)
    torch.manual_seed(cfg.seed)
    ds = datasets.build(cfg)
    model = GPT(cfg.model, ds.n_out).to(dev)
    forward = forward_pass(model, dev, cfg.train)  # the config's dtype and compile
    groups, _ = param_groups(model, cfg.optimizer.weight_decay)
    o = cfg.optimizer
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, foreach=True)
    sampler = datasets.sampler(cfg, ds)
    deterministic = torch.are_deterministic_algorithms_enabled()  # train() turns it on
    torch.use_deterministic_algorithms(False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    tokens, positions, t0 = 0, 0, time.perf_counter()
    for _ in range(cfg.train.steps):
        b = ds.batch(sampler.next_ids())
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
    torch.set_num_threads(before)
    return tokens / seconds, positions / cfg.train.steps


@contextmanager
def no_whole_set():
    """The logs-only loop: the evaluator is never due (a bench-side patch, put back on exit;
    the training code is not changed)."""
    due = WholeSetLoss.due
    WholeSetLoss.due = lambda self, step, grad_norm: False
    try:
        yield
    finally:
        WholeSetLoss.due = due


def minitrain_loop(cfg, mode: str) -> float:
    """tokens/s of minitrain's loop: mode "full" (logs and whole-set losses), "logs" (the
    per-step logs only) or "off" (no instrumentation)."""
    cfg = copy.deepcopy(cfg)
    cfg.train.instrument = mode != "off"
    cfg.train.eval_every, cfg.train.eval_dense = 25, True
    with tempfile.TemporaryDirectory() as d, \
            no_whole_set() if mode == "logs" else nullcontext():
        return train(cfg, Path(d) / "run", progress=False)["loop_tokens_per_s"]


def whole_set_eval_ms(cfg, repeats: int = 5) -> float:
    """One evaluation of the train and val sets, alone (the model as initialised)."""
    dev = ddp.pick_device(cfg.train.device)
    ds = datasets.build(cfg)
    model = GPT(cfg.model, ds.n_out).to(dev)
    evaluator = WholeSetLoss(forward_pass(model, dev, cfg.train),
                             {"train_loss": ds.full.to(dev), "val_loss": ds.full_val.to(dev)},
                             cfg.train.steps, 1, 0)
    evaluator.measure()
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        evaluator.measure()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


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
        models: tuple[str, ...] | None = None, overrides: tuple[str, ...] = (),
        threads: int = 1) -> dict:
    if models is None:  # every model of bench/models.yaml that runs on any machine
        models = tuple(name for name, (_, _, gpu) in MODELS.items() if not gpu)
    cores = len(os.sched_getaffinity(0))
    dev = ddp.pick_device(device)
    cfgs = {name: _cfg(name, steps, device, (f"train.threads={threads}", *overrides))
            for name in models}
    peaks = {d: matmul_flops(dev, DTYPES[d]) for d in sorted({c.train.dtype
                                                              for c in cfgs.values()})}
    rows = {}
    for name, cfg in cfgs.items():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        runs = {"full": [], "logs": [], "off": [], "reference": []}
        for _ in range(repeats):  # one of each per repeat: drift reaches all four alike
            for mode in ("full", "logs", "off"):
                runs[mode].append(minitrain_loop(cfg, mode))
            runs["reference"].append(reference_loop(cfg, cores))
        full, logs, off = (statistics.median(runs[k]) for k in ("full", "logs", "off"))
        ref = statistics.median(r[0] for r in runs["reference"])
        seq_len = runs["reference"][0][1]
        opt = optimizer_step(cfg, repeats)
        n_params = sum(p.numel() for p in GPT(cfg.model, cfg.data.vocab_size).parameters())
        rows[name] = {
            "n_params": n_params, "batch_size": cfg.data.batch_size,
            "rows": "packed" if cfg.data.pack else "padded",
            "mean_row_length": round(seq_len, 1),
            "log_thread": background.wanted(cfg.train, dev.type),
            "tokens_per_s_full": round(full), "tokens_per_s_logs": round(logs),
            "tokens_per_s_off": round(off), "tokens_per_s_reference": round(ref),
            "full_over_reference": round(full / ref, 3),
            "per_step_logs_cost": round(1 - logs / off, 3),
            "whole_set_eval_cost": round(1 - full / logs, 3),
            "whole_set_eval_ms": round(whole_set_eval_ms(cfg), 1),
            "adamw_step_ms": round(opt["minitrain"] * 1e3, 4),
            "torch_adamw_step_ms": round(opt["torch"] * 1e3, 4),
            "adamw_over_torch": round(opt["minitrain"] / opt["torch"], 3),
            "dtype": cfg.train.dtype,
            "mfu_off": round(off * flops_per_token(cfg, n_params, seq_len)
                             / peaks[cfg.train.dtype], 4),
        }
        if dev.type == "cuda":
            rows[name]["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
    result = {"machine": platform.platform(), "processor": platform.processor() or "unknown",
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": threads, "reference_threads": cores,
              "repeats": repeats, "steps_per_run": steps, "overrides": list(overrides),
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
    head = (f"# Benchmark\n\n{r['machine']} ({r['cpu_capability']}), {r['device']}, "
            f"torch {r['torch']}, {r['threads']} training thread(s), the reference "
            f"{r['reference_threads']}, median of {r['repeats']} runs of {r['steps_per_run']} "
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
    p.add_argument("--threads", type=int, default=1,
                   help="minitrain's intra-op threads (the reference gets every core)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every model (repeatable)")
    a = p.parse_args(argv)
    models = tuple(a.models.split(",")) if a.models else None
    unknown = [m for m in models or () if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    try:
        result = run(a.repeats, a.steps, Path(a.out), a.device, models, tuple(a.set),
                     a.threads)
    except config.ConfigError as e:  # --device cuda where torch sees none
        p.exit(2, f"minitrain.tools.bench: error: {e}\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
