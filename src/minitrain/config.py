"""Typed run configuration: load a YAML file, apply `--set key=value` overrides, validate.

Every error names the file and the dotted key, and is raised as ConfigError (the CLI turns it
into one line and exit status 2).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message is meant for the user as it is."""


@dataclass
class DataConfig:
    train: str = "corpus/train.txt"  # one sentence per line; line number = sentence id
    val: str = "corpus/val.txt"
    vocab_size: int = 320  # BPE vocabulary, special tokens included
    batch_size: int = 8  # sentences per batch
    sampler: str = "random"  # see SAMPLERS and minitrain.data.Sampler
    tracked_words: list[str] = field(default_factory=lambda: ["written"])
    arrive_step: int = 0  # arrival samplers: the step the tracked sentences arrive
    arrive_gap: int = 25  # arrival-spread: steps between two arriving sentences

    def check(self, where):
        if self.vocab_size < 64:
            raise where("data.vocab_size", "must be at least 64")
        if self.batch_size < 1:
            raise where("data.batch_size", "must be at least 1")
        if self.sampler not in SAMPLERS:
            raise where("data.sampler", f"must be one of {', '.join(SAMPLERS)}")
        if self.arrive_step < 0:
            raise where("data.arrive_step", "must be >= 0")
        if self.arrive_gap < 1:
            raise where("data.arrive_gap", "must be at least 1")


SAMPLERS = ("random", "shuffle", "spread", "arrival", "arrival-seen", "arrival-spread")


@dataclass
class ModelConfig:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 32  # longest sentence in tokens, BOS/EOS included
    tie_weights: bool = True  # head shares the token embedding matrix

    def check(self, where):
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, key) < 1:
                raise where(f"model.{key}", "must be at least 1")
        if self.n_embd % self.n_head:
            raise where("model.n_embd", f"must be divisible by model.n_head ({self.n_head})")


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3e-3  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # applied to matrices only, not to gains and biases
    grad_clip: float | None = 1.0  # global L2 threshold; null (or inf) = no clipping
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr

    def check(self, where):
        if self.name != "adamw":
            raise where("optimizer.name", "must be adamw")
        if not self.lr > 0:
            raise where("optimizer.lr", "must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise where("optimizer.betas", "must be two numbers in [0, 1)")
        if not self.eps > 0:
            raise where("optimizer.eps", "must be > 0")
        if self.weight_decay < 0:
            raise where("optimizer.weight_decay", "must be >= 0")
        if self.grad_clip is not None:
            if math.isnan(self.grad_clip) or self.grad_clip <= 0:
                raise where("optimizer.grad_clip", "must be a positive number, inf or null")
            if math.isinf(self.grad_clip):
                self.grad_clip = None  # one spelling for "off"
        if self.warmup_steps < 0:
            raise where("optimizer.warmup_steps", "must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise where("optimizer.min_lr_ratio", "must be in [0, 1]")


@dataclass
class TrainConfig:
    steps: int = 600
    eval_every: int = 1  # whole-train-set and val loss every N steps
    eval_dense: bool = True  # and every step for 100 steps after a gradient-norm jump
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    instrument: bool = True  # false: write only config, tokenizer and summary (benchmarks)
    checkpoint_every: int = 200  # steps between checkpoints (0: only when interrupted)
    device: str = "cpu"  # cpu, cuda, or auto (cuda when available); see DEVICES
    compile: bool = False  # torch.compile the model's forward pass
    dtype: str = "float32"  # forward pass: float32, or bfloat16 autocast (moments stay fp32)

    def check(self, where):
        if self.device not in DEVICES:
            raise where("train.device", f"must be one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise where("train.dtype", f"must be one of {', '.join(DTYPES)}")
        if self.steps < 1:
            raise where("train.steps", "must be at least 1")
        if self.eval_every < 1:
            raise where("train.eval_every", "must be at least 1")
        if self.checkpoint_every < 0:
            raise where("train.checkpoint_every", "must be >= 0")
        if self.threads < 0:
            raise where("train.threads", "must be >= 0")


DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16")


@dataclass
class Config:
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `key=value` overrides, validate. Raises ConfigError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        _apply_override(raw, item, path)
    return from_dict(raw, source=str(path))


def from_dict(raw: dict, source: str = "<config>") -> Config:
    def where(key, what):
        key = str(key)  # a key from the command line may hold anything, newlines included
        return ConfigError(f"{source}: {key if key.isprintable() else repr(key)}: {what}")

    cfg = _build(Config, raw, "", where)
    for section in (cfg.data, cfg.model, cfg.optimizer, cfg.train):
        section.check(where)
    return cfg


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{path}: override {item!r}: expected key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _build(cls, raw, prefix, where):
    if not isinstance(raw, dict):
        raise where(prefix.rstrip(".") or "<top>", "expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            known = ", ".join(sorted(names))
            raise where(f"{prefix}{key}", f"unknown key (expected one of: {known})")
    kwargs = {}
    for name in names & raw.keys():
        kwargs[name] = _coerce(raw[name], hints[name], f"{prefix}{name}", where)
    return cls(**kwargs)


def _coerce(value, hint, key, where):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, where)
    if origin is list:
        if not isinstance(value, list):
            raise where(key, f"expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise where(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 and inf as strings
            try:
                return float(value)
            except ValueError:
                raise where(key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise where(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint}")  # a bug in this module, not user input


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
