"""Typed run configuration: load a YAML file, apply `--set key=value` overrides, validate.

Every error names the file and the dotted key, and is raised as ConfigError (the CLI turns it
into one line and exit status 2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from minitrain.core import typed


class ConfigError(ValueError):
    """A config that cannot be used; the message is meant for the user as it is."""


class InvalidValue(ConfigError):
    """A section's own check failed; the message names the key, `from_dict` adds the file."""


def _invalid(key, what):
    return InvalidValue(f"{key}: {what}")


INFINITE_OK = {"optimizer.grad_clip"}  # inf means "off" here; every other number is finite


class Section:
    """Every section checks itself when it is built, from a file or in code."""

    KEY = ""  # the section's name in a config file

    def __post_init__(self):
        for f in dataclasses.fields(self):
            key, value = f"{self.KEY}.{f.name}", getattr(self, f.name)
            numbers = value if isinstance(value, list) else [value]
            if key not in INFINITE_OK and any(isinstance(x, float) and not math.isfinite(x)
                                              for x in numbers):
                raise _invalid(key, f"must be a finite number, got {value!r}")
        self.check(_invalid)


@dataclass
class DataConfig(Section):
    KEY = "data"
    kind: str = "corpus"  # see DATA_KINDS and minitrain.core.datasets
    train: str = "corpus/train.txt"  # one sentence per line; line number = sentence id
    val: str = "corpus/val.txt"
    vocab_size: int = 320  # BPE vocabulary, special tokens included
    batch_size: int = 8  # sentences per batch
    sampler: str = "random"  # see SAMPLERS and minitrain.core.data.Sampler
    pack: bool = False  # corpus: rows are block_size-token windows of the joined sentences
    # (minitrain.core.data.Packed), not one padded sentence each; the sampler picks windows
    tracked_words: list[str] = field(default_factory=lambda: ["written"])
    arrive_step: int = 0  # arrival samplers: the step the tracked sentences arrive
    arrive_gap: int = 25  # arrival-spread: steps between two arriving sentences
    # synthetic kinds (toy-tokens, tabular): drawn once from `seed`
    n_samples: int = 1000  # training examples
    n_val: int = 200  # held-out examples (val_loss)
    rare_fraction: float = 0.01  # toy-tokens: share of examples involving B (0.01 = 99:1)
    n_features: int = 10  # tabular: columns, standardised to zero mean and unit variance
    n_classes: int = 3  # tabular: classes
    # mixture: several corpora, weights changed at phase boundaries (minitrain.core.mixer)
    sources: list[str] = field(default_factory=list)  # one sentence per line each
    schedule: str = "seeded"  # seeded | bandit (Exp3): how each phase's lead source is picked
    phase_min: int = 7  # phase length in steps, drawn uniformly in [phase_min, phase_max]
    phase_max: int = 42
    lead_share: float = 0.8  # the lead source's share of a phase; the rest split evenly
    bandit_gamma: float = 0.2  # Exp3's exploration rate

    def check(self, where):
        if self.kind not in DATA_KINDS:
            raise where("data.kind", f"must be one of {', '.join(DATA_KINDS)}")
        if self.kind in ("corpus", "mixture") and self.vocab_size < 64:
            raise where("data.vocab_size", "must be at least 64")
        if self.batch_size < 1:
            raise where("data.batch_size", "must be at least 1")
        if self.sampler not in SAMPLERS:
            raise where("data.sampler", f"must be one of {', '.join(SAMPLERS)}")
        if self.pack and self.kind != "corpus":
            raise where("data.pack", f"packs a corpus's sentences: data.kind {self.kind} "
                        "cannot be packed")
        if self.pack and self.sampler not in PACK_SAMPLERS:
            raise where("data.pack", f"rows are windows of the token stream, and data.sampler "
                        f"{self.sampler} places single sentences: use "
                        f"{' or '.join(PACK_SAMPLERS)}")
        if self.arrive_step < 0:
            raise where("data.arrive_step", "must be >= 0")
        if self.arrive_gap < 1:
            raise where("data.arrive_gap", "must be at least 1")
        if self.n_samples < 10:
            raise where("data.n_samples", "must be at least 10")
        if self.n_val < 1:
            raise where("data.n_val", "must be at least 1")
        if not 0 < self.rare_fraction < 1:
            raise where("data.rare_fraction", "must be in (0, 1)")
        if self.n_features < 1:
            raise where("data.n_features", "must be at least 1")
        if self.n_classes < 2:
            raise where("data.n_classes", "must be at least 2")
        if self.kind == "mixture" and len(self.sources) < 2:
            raise where("data.sources", "data.kind mixture needs at least 2 source files")
        if self.schedule not in SCHEDULES:
            raise where("data.schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.phase_min < 1:
            raise where("data.phase_min", "must be at least 1")
        if self.phase_max < self.phase_min:
            raise where("data.phase_max", f"must be >= data.phase_min ({self.phase_min})")
        if not 0 < self.lead_share <= 1:
            raise where("data.lead_share", "must be in (0, 1]")
        if not 0 < self.bandit_gamma <= 1:
            raise where("data.bandit_gamma", "must be in (0, 1]")


OPTIMIZERS = ("adamw", "sgd")
CLIP_MODES = ("global", "per-tensor", "value")
DATA_KINDS = ("corpus", "toy-tokens", "tabular", "mixture")
SCHEDULES = ("seeded", "bandit")  # minitrain.core.mixer
MODEL_KINDS = ("gpt", "embed-linear", "mlp")
SAMPLERS = ("random", "shuffle", "spread", "arrival", "arrival-seen", "arrival-spread")
PACK_SAMPLERS = ("random", "shuffle")  # the others place single (tracked) sentences


@dataclass
class ModelConfig(Section):
    KEY = "model"
    kind: str = "gpt"  # gpt | embed-linear | mlp (minitrain.core.zoo)
    n_layer: int = 2  # mlp: hidden layers
    n_head: int = 4  # gpt only
    n_embd: int = 64  # embed-linear: embedding size; mlp: hidden width
    block_size: int = 32  # gpt only: longest sentence in tokens, BOS/EOS included
    tie_weights: bool = True  # gpt only: head shares the token embedding matrix
    residual: bool = False  # mlp: x + f(x) around each hidden layer
    layer_norm: bool = False  # mlp: LayerNorm before each hidden layer
    init_gain: float = 1.0  # mlp: weights ~ N(0, gain^2 * 2 / fan_in); 1 = He init
    init_std: float = 0.02  # gpt: weights ~ N(0, init_std^2) (GPT-2's 0.02; bad-init: 2.0)
    causal: bool = True  # gpt: false lets attention see later tokens (the causal-leak break)

    def check(self, where):
        if self.kind not in MODEL_KINDS:
            raise where("model.kind", f"must be one of {', '.join(MODEL_KINDS)}")
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, key) < 1:
                raise where(f"model.{key}", "must be at least 1")
        for key in ("init_gain", "init_std"):
            if not getattr(self, key) > 0:
                raise where(f"model.{key}", "must be a positive number")
        if self.kind == "gpt" and self.n_embd % self.n_head:
            raise where("model.n_embd", f"must be divisible by model.n_head ({self.n_head})")


@dataclass
class OptimizerConfig(Section):
    KEY = "optimizer"
    name: str = "adamw"  # adamw | sgd (SGD with momentum)
    lr: float = 3e-3  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # adamw only
    eps: float = 1e-8  # adamw only
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.1  # applied to matrices only, not to gains and biases
    grad_clip: float | None = 1.0  # clip threshold; null (or inf) = no clipping
    clip_from_step: int = 0  # grad_clip acts from this step on (before it: no clip)
    clip_mode: str = "global"  # global (L2 of all tensors) | per-tensor (L2 each) | value
    clip_z: float | None = None  # adaptive clip: cap the norm at its EMA mean + clip_z std
    skip_z: float | None = None  # skip the update when the norm's z-score is above this
    norm_ema: float = 0.97  # EMA factor of the norm statistics behind clip_z and skip_z
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    decay_steps: int = 0  # the step where the cosine reaches its floor; 0 = train.steps

    def check(self, where):
        if self.name not in OPTIMIZERS:
            raise where("optimizer.name", f"must be one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            raise where("optimizer.momentum", "must be in [0, 1)")
        if self.clip_mode not in CLIP_MODES:
            raise where("optimizer.clip_mode", f"must be one of {', '.join(CLIP_MODES)}")
        for key in ("clip_z", "skip_z"):
            z = getattr(self, key)
            if z is not None and not (z > 0 and math.isfinite(z)):
                raise where(f"optimizer.{key}", "must be a positive number or null")
        if self.clip_z is not None and self.clip_mode != "global":
            raise where("optimizer.clip_z", "the adaptive clip caps the global norm: "
                        "it needs optimizer.clip_mode global")
        if not 0 < self.norm_ema < 1:
            raise where("optimizer.norm_ema", "must be in (0, 1)")
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
            self.grad_clip = clip_threshold(self.grad_clip)
        if self.clip_from_step < 0:
            raise where("optimizer.clip_from_step", "must be >= 0")
        if self.warmup_steps < 0:
            raise where("optimizer.warmup_steps", "must be >= 0")
        if self.decay_steps < 0:
            raise where("optimizer.decay_steps", "must be >= 0 (0: the run's train.steps)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise where("optimizer.min_lr_ratio", "must be in [0, 1]")


def clip_threshold(value: float | None) -> float | None:
    """The one spelling of "no clip": None (a config, a caller may also say inf)."""
    return None if value is None or math.isinf(value) else value


@dataclass
class TrainConfig(Section):
    KEY = "train"
    steps: int = 600
    eval_every: int = 1  # whole-train-set and val loss every N steps
    eval_dense: bool = True  # and every step for 100 steps after a gradient-norm jump
    dense_every: int = 1  # in those 100 steps, every N-th step (sweeps: fewer evaluations)
    eval_max_rows: int = 4096  # above this many sentences a set is evaluated on a fixed,
    # seeded subset of this many (summary.json: whole_set_subset); 0: always the whole set
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    instrument: bool = True  # false: write only config, tokenizer and summary (benchmarks)
    extra_logs: list[str] = field(default_factory=lambda: list(EXTRA_LOGS))  # beside metrics
    # and batches, which every instrumented run writes; sweeps drop these to run faster
    checkpoint_every: int = 200  # steps between checkpoints (0: only when interrupted)
    device: str = "cpu"  # cpu, cuda, or auto (cuda when available); see DEVICES
    compile: bool = False  # torch.compile the model's forward pass
    dtype: str = "float32"  # forward pass: float32, or bfloat16 / float16 autocast (float16
    # with dynamic loss scaling); weights, gradients and moments stay fp32
    log_thread: bool = True  # the whole-set losses evaluated on a second thread when a core
    # is left for it (core/background.py); false: on the training thread, the same bytes

    def check(self, where):
        if self.device not in DEVICES:
            raise where("train.device", f"must be one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise where("train.dtype", f"must be one of {', '.join(DTYPES)}")
        if self.steps < 1:
            raise where("train.steps", "must be at least 1")
        if self.eval_every < 1:
            raise where("train.eval_every", "must be at least 1")
        if self.dense_every < 1:
            raise where("train.dense_every", "must be at least 1")
        if self.eval_max_rows < 0:
            raise where("train.eval_max_rows", "must be >= 0 (0: the whole set)")
        if self.checkpoint_every < 0:
            raise where("train.checkpoint_every", "must be >= 0")
        if self.threads < 0:
            raise where("train.threads", "must be >= 0")
        for i, name in enumerate(self.extra_logs):
            if name not in EXTRA_LOGS:
                raise where(f"train.extra_logs[{i}]", f"must be one of {', '.join(EXTRA_LOGS)}")


EXTRA_LOGS = ("token_losses", "moments")


@dataclass
class DiagnoseConfig(Section):
    KEY = "diagnose"
    """Spike thresholds for `minitrain diagnose` (and the sweep): a step is a spike when it is
    >= min_ratio x the median of the `window` steps before and >= z robust sd above it."""
    window: int = 50
    z: float = 6.0
    min_ratio: float = 3.0
    merge: int = 20  # flagged steps closer than this are one event

    def check(self, where):
        if self.window < 10:
            raise where("diagnose.window", "must be at least 10")
        if not self.z > 0:
            raise where("diagnose.z", "must be > 0")
        if not self.min_ratio >= 1:
            raise where("diagnose.min_ratio", "must be >= 1")
        if self.merge < 0:
            raise where("diagnose.merge", "must be >= 0")


DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Config:
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)

    def __post_init__(self):
        # features are numbers, not token ids: only the mlp reads them, and it reads nothing else
        if (self.model.kind == "mlp") != (self.data.kind == "tabular"):
            raise _invalid("model.kind", f"{self.model.kind!r} cannot read data.kind "
                           f"{self.data.kind!r} (mlp goes with tabular, and only with it)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `key=value` overrides, validate. Raises ConfigError."""
    from minitrain.core import configfile  # the file side: YAML, `base:`, overrides

    path = Path(path)
    raw = configfile.read(path)
    for item in overrides:
        configfile.apply_override(raw, item, path)
    return from_dict(raw, source=str(path))


def from_dict(raw: dict, source: str = "<config>") -> Config:
    def where(key, what):
        key = str(key)  # a key from the command line may hold anything, newlines included
        return ConfigError(f"{source}: {key if key.isprintable() else repr(key)}: {what}")

    try:
        return typed.build(Config, raw, "", where)  # each section checks itself as it is built
    except InvalidValue as e:
        raise ConfigError(f"{source}: {e}") from None


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
