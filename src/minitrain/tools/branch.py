"""Branching: start a run from another run's checkpoint when the two configs provably train
alike up to that step, so a sweep pays for a shared prefix once.

Two configs train alike up to step F when, apart from `train.checkpoint_every`, they differ only
in
- the guards (optimizer.grad_clip, clip_mode, clip_z, skip_z, norm_ema, clip_from_step), and
  the source's logged pre-clip norms, replayed through the optimizer's own rule
  (`guards.plan`), show that neither run's guards acted on any step before F;
- the arrival samplers (data.sampler arrival / arrival-spread, data.arrive_gap), with F at or
  before data.arrive_step: both hold the rare sentences back and draw alike until then.
Anything else, and the branch is refused with the reason. A branched directory is what the run
would have written by step F: its own config, the source's logs cut at F (grad_z refilled from
the replay) and the source's checkpoint with the guard statistics replayed. Training then
resumes from it. tests/test_sweep.py checks branched runs against runs trained from scratch,
byte for byte.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import yaml

from minitrain.core import checkpoint, guards, rundir
from minitrain.core import config as config_mod
from minitrain.core.config import Config, ConfigError

GUARD_KEYS = {"optimizer.grad_clip", "optimizer.clip_mode", "optimizer.clip_z",
              "optimizer.skip_z", "optimizer.norm_ema", "optimizer.clip_from_step"}
HELD_BACK = ("arrival", "arrival-spread")  # samplers that draw alike until data.arrive_step
INERT = {"train.checkpoint_every"}  # when state is saved changes nothing that is trained


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_gap(src: Config, cfg: Config, step: int | None = None) -> str | None:
    """Why `cfg` cannot branch from a run of `src` (at `step`, when known), from the configs
    alone; None when only the guards (judged later, on the logs) stand in the way."""
    a, b = _flat(src.to_dict()), _flat(cfg.to_dict())
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key) or key in INERT or key in GUARD_KEYS:
            continue
        if key in ("data.sampler", "data.arrive_gap") and \
                a["data.sampler"] in HELD_BACK and b["data.sampler"] in HELD_BACK:
            if step is not None and step > cfg.data.arrive_step:
                return (f"the samplers differ and the source's checkpoint (step {step}) is "
                        f"after data.arrive_step ({cfg.data.arrive_step})")
            continue
        return f"{key} differs ({a.get(key)!r} in the source, {b.get(key)!r} here)"
    return None


def replay(metrics: list[dict], src: Config, cfg: Config, step: int
           ) -> tuple[list[float], dict] | str:
    """Replay `cfg`'s guards over the source's first `step` logged norms. Returns the z-scores
    they would have logged and their statistics after `step`, or why they (or the source's
    own guards) would have acted."""
    o = cfg.optimizer  # grad_clip: None when off (the config spells inf as null)
    guard = guards.guard_for(o)
    same_clip = [(x.optimizer.grad_clip, x.optimizer.clip_mode, x.optimizer.clip_from_step)
                 for x in (src, cfg)]
    same_clip = same_clip[0] == same_clip[1]
    zs = []
    for k, m in enumerate(metrics[:step]):
        if m.get("skipped") or m["clip_factor"] != 1.0:
            return f"the source's own guards acted at step {k}"
        g = m["grad_norm_pre_clip"]
        if g is None or not math.isfinite(g):
            return f"the source's gradient norm at step {k} is not finite"
        z, skip, threshold, mode = guards.plan(
            g, guards.clip_at(o.grad_clip, o.clip_from_step, k), o.clip_mode, guard)
        if skip:
            return f"optimizer.skip_z would have skipped step {k} (z = {z:.2f})"
        if threshold is not None:
            if mode == "global":
                if guards.global_factor(threshold, g) < 1.0:
                    return (f"the clip would have acted at step {k} (norm {g:.4g} over "
                            f"{threshold:.4g})")
            elif not same_clip:  # the source ran this very clip and the log shows it idle
                return f"a {mode} clip cannot be judged from the logged global norm"
        if guard.active:
            guard.observe(g)  # the clip did nothing: the applied norm is the raw one
        zs.append(z)
    return zs, guard.state_dict()


def branch(src: Path, cfg: Config, dst: Path) -> str | None:
    """Make `dst` the run directory `cfg` would have written by the step of `src`'s
    checkpoint, ready to resume, and return None; or return why that cannot be proved, leaving
    `dst` untouched."""
    src, dst = Path(src), Path(dst)
    try:
        state = checkpoint.read(src)
        raw = yaml.safe_load((src / rundir.CONFIG).read_text(encoding="utf-8"))
        src_cfg = config_mod.from_dict(raw, str(src / rundir.CONFIG))
        metrics = rundir.read_jsonl(src / rundir.METRICS)
    except (checkpoint.CheckpointError, rundir.RunDirError, ConfigError, OSError,
            yaml.YAMLError) as e:
        return f"no usable source run: {str(e).splitlines()[0]}"
    step = int(state["step"])
    gap = config_gap(src_cfg, cfg, step)
    if gap:
        return gap
    if len(metrics) < step:
        return f"{src / rundir.METRICS}: holds {len(metrics)} steps, the checkpoint {step}"
    replayed = replay(metrics, src_cfg, cfg, step)
    if isinstance(replayed, str):
        return replayed
    zs, guard_state = replayed

    dst = rundir.prepare(dst, replace=True)
    (dst / rundir.CONFIG).write_text(config_mod.dump(cfg), encoding="utf-8")
    for name in rundir.RUN_FILES:
        if name not in (rundir.CONFIG, rundir.SUMMARY, rundir.CHECKPOINT) and \
                (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    checkpoint.trim_logs(dst, step)
    # grad_z is the one logged field the guards write when they do not act
    rows = rundir.read_jsonl(dst / rundir.METRICS)
    tmp = dst / (rundir.METRICS + ".tmp")
    w = rundir.JsonlWriter(tmp)  # the training loop's own writer: the same bytes
    for m, z in zip(rows, zs, strict=True):
        w.write({**m, "grad_z": None if math.isnan(z) else z})
    w.close()
    tmp.replace(dst / rundir.METRICS)
    state["optimizer"]["guard"] = guard_state
    checkpoint.write(dst, state)
    rundir.write_json_atomic(dst / rundir.SUMMARY, {
        "status": "interrupted", "steps_completed": step, "steps_planned": cfg.train.steps,
        "branched_from": {"run": str(src), "step": step}})
    return None


def train_from(src: Path | None, cfg: Config, out: Path, replace: bool = False,
               progress: bool = False) -> tuple[dict, str]:
    """Train `cfg` into `out`, branched from `src`'s checkpoint when that is proved to change
    nothing, else from scratch. Returns the summary and how the run started."""
    from minitrain.core.train import train

    out = Path(out)
    if not replace:
        rundir.prepare(out)  # a run already there: the usual one line, nothing touched
    why = branch(Path(src), cfg, out) if src else None
    if src and why is None:
        summary = train(cfg, out, progress=progress, resume=True)
        every = cfg.train.checkpoint_every
        if summary["status"] == "completed" and (not every or every > cfg.train.steps):
            # the branch point's checkpoint was only a start: a from-scratch run of this
            # config keeps none
            (out / rundir.CHECKPOINT).unlink(missing_ok=True)
        return summary, f"branched from {src} at step {summary['resumed_at_step']}"
    summary = train(cfg, out, progress=progress, replace=True)
    return summary, f"from scratch: {why}" if why else ""
