"""The run directory contract (docs/run-format.md): writers used by training, readers used by
every report. Logs are append-only and flushed per step; readers tolerate a truncated last line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from minitrain.core.logs import (  # noqa: F401  (the log files' names, read from here)
    BATCHES,
    CLASSES,
    GEOMETRY,
    LAYERS,
    LOGS,
    METRICS,
    MOMENTS,
    PHASES,
    TOKEN_LOSSES,
)

# the resolved config is not called config.yaml: an experiment folder keeps its source config
# under that name and its run files beside it
CONFIG, TOKENIZER, SUMMARY = "config.resolved.yaml", "tokenizer.json", "summary.json"

# One record per scored position: which step, which sentence, where, what, and how wrong.
TOKEN_LOSS_DTYPE = np.dtype([("step", "<u4"), ("row", "<u2"), ("pos", "<u2"), ("sentence", "<i4"),
                             ("token", "<i4"), ("target", "<i4"), ("loss", "<f4")])


class RunDirError(ValueError):
    """A run directory that cannot be read; the message names the directory and the file."""


def clean(x):
    """JSON-safe values: NaN and inf become null (strict JSON has neither), NumPy scalars
    become Python numbers."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


SLOT = "\x00"  # a number's place in a `LineTemplate`'s skeleton


class LineTemplate:
    """The JSON line of a record whose keys never change from step to step, only its numbers:
    the keys are encoded once (from a skeleton holding SLOT for each number) and each step
    fills the numbers in, in the skeleton's order. The same bytes as json.dumps, in half
    the time on a record of many small dicts (Python's str of a float is json's repr)."""

    def __init__(self, skeleton: dict):
        text = json.dumps(clean(skeleton), separators=(",", ":"), allow_nan=False)
        self.text = text.replace("%", "%%").replace(json.dumps(SLOT), "%s")
        self.n = text.count(json.dumps(SLOT))

    def fill(self, numbers: list) -> str:
        """numbers: ints and floats (not bools: str(True) is no JSON); NaN and inf become
        null, as `clean` makes them."""
        if len(numbers) != self.n:
            raise ValueError(f"the template has {self.n} numbers, not {len(numbers)}")
        if not math.isfinite(sum(numbers)):  # one NaN or inf makes the sum so
            numbers = [x if math.isfinite(x) else "null" for x in numbers]
        return self.text % tuple(numbers)


class JsonlWriter:
    # json.dumps with options builds an encoder per call: one, built once, writes every line
    _strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, obj: dict) -> None:
        try:  # most records are plain finite numbers: skip the walk through `clean`
            line = self._strict.encode(obj)
        except (ValueError, TypeError):  # NaN/inf or NumPy scalars: the same bytes via clean
            line = json.dumps(clean(obj), separators=(",", ":"))
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """One JSON line already encoded (`LineTemplate.fill`)."""
        self.f.write(line + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class TokenLossWriter:
    def __init__(self, path: Path):
        self.f = open(path, "ab")

    def write(self, records: np.ndarray) -> None:
        self.f.write(records.astype(TOKEN_LOSS_DTYPE, copy=False).tobytes())
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def write_json_atomic(path: Path, obj: dict) -> None:
    """Replace a small JSON file whole (temp file + rename): never half-written."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(clean(obj), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


CHECKPOINT = "checkpoint.pt"
RUN_FILES = (CONFIG, TOKENIZER, SUMMARY, CHECKPOINT, *(k.name for k in LOGS))
# keys added to the config after runs were written with it: an older run lacks them, and reads
# as their defaults
ADDED_KEYS = {"data.kind", "data.n_samples", "data.n_val", "data.rare_fraction",
              "data.n_features", "data.n_classes", "model.kind", "model.residual",
              "model.layer_norm", "model.init_gain", "optimizer.momentum",
              "optimizer.clip_mode", "optimizer.clip_z", "optimizer.skip_z",
              "optimizer.norm_ema", "train.extra_logs", "train.device", "train.compile",
              "train.dtype", "diagnose", "data.sources", "data.schedule", "data.phase_min",
              "data.phase_max", "data.lead_share", "data.bandit_gamma", "train.dense_every",
              "optimizer.clip_from_step", "model.init_std", "model.causal", "data.pack",
              "optimizer.decay_steps", "train.log_thread",
              "train.eval_max_rows"}


LOCK = "run.lock"  # held while a run writes the directory; never deleted, so never raced


def lock(out: Path):
    """Hold `out`'s lock for as long as the returned file stays open: a second run on the same
    directory is refused while the first writes. The kernel drops the lock when the process
    ends, however it ends, so a killed run leaves none behind."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a")  # noqa: SIM115  (held open: the lock lives as long as the file)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunDirError(f"{out}: another minitrain run is writing it now") from None
    return f


def prepare(out: Path, replace: bool = False) -> Path:
    """Create a run directory; refuse to mix a new run into an old one unless `replace`,
    which deletes the old run's files (and only those: a config or README beside them stays)."""
    out = Path(out)
    old = [out / n for n in RUN_FILES if (out / n).exists()]
    if old and not replace:
        raise RunDirError(f"{out}: already holds a run; pass --force to replace it")
    # and what a killed run may leave: a temp file it had not yet renamed
    for p in old + [out / f"{n}.tmp" for n in RUN_FILES if (out / f"{n}.tmp").exists()]:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---- readers --------------------------------------------------------------------------------

REQUIRED = {k.name: k.keys for k in LOGS if k.keys}


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line; a final line cut off by a hard kill is skipped. Any other line
    that is not a whole record is an error."""
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    except OSError as e:
        raise RunDirError(f"{path}: cannot read: {e.strerror}") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and all(k in row for k in REQUIRED.get(path.name, ()))
        except json.JSONDecodeError:
            ok = False
        if not ok:
            if i == last:  # the last line, cut off by a hard kill
                break
            raise RunDirError(f"{path}: line {i + 1} is not a whole record")
        rows.append(row)
    return rows


def read_token_losses(path: Path) -> np.ndarray:
    """All token-loss records (structured array, TOKEN_LOSS_DTYPE); a cut-off record is dropped;
    none when the run did not log them."""
    if not path.is_file():
        return np.empty(0, TOKEN_LOSS_DTYPE)
    raw = np.fromfile(path, dtype=np.uint8)
    n = len(raw) // TOKEN_LOSS_DTYPE.itemsize
    return raw[: n * TOKEN_LOSS_DTYPE.itemsize].view(TOKEN_LOSS_DTYPE)


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict
    metrics: list[dict]
    batches: list[dict]
    moments: list[dict] = field(default_factory=list)
    _token_losses: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def column(self, key: str) -> np.ndarray:
        """One metrics field over steps, NaN where missing or null."""
        return np.array([np.nan if m.get(key) is None else m[key] for m in self.metrics], float)

    def token_losses(self, step: int | None = None) -> np.ndarray:
        if self._token_losses is None:
            self._token_losses = read_token_losses(self.path / TOKEN_LOSSES)
        tl = self._token_losses
        return tl if step is None else tl[tl["step"] == step]

    def tracked_rows(self) -> list[tuple[str, str]]:
        """(piece, table) for every tracked vocabulary row logged in moments.jsonl."""
        if not self.moments:
            return []
        return [(p, t) for p, rows in self.moments[0]["tracked"].items()
                for t in rows if t != "id"]

    def v_trace(self, piece: str, table: str) -> np.ndarray:
        """Mean of Adam's v over a tracked piece's row in `table` (wte or head), per step."""
        return np.array([m["tracked"].get(piece, {}).get(table, {}).get("v_mean", np.nan)
                         for m in self.moments])

    def log(self, name: str) -> list[dict]:
        """An extra log (CLASSES, GEOMETRY, LAYERS, PHASES); empty when this run has none."""
        path = self.path / name
        return read_jsonl(path) if path.is_file() else []

    def decoder(self):
        """What turns ids back into text: the run's BPE for the corpus, else its vocabulary."""
        if self.config.get("data", {}).get("kind", "corpus") in ("corpus", "mixture"):
            return self.tokenizer()
        return Vocab(self.summary.get("vocab") or [])

    def tokenizer(self):
        from minitrain.core.tokenizer import Tokenizer

        try:
            return Tokenizer.load(self.path / TOKENIZER)
        except Exception as e:  # tokenizers raises its own exception types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunDirError(f"{self.path}: unreadable {TOKENIZER}: {first}") from None


class Vocab:
    """The names of a synthetic run's tokens or classes, with the tokenizer's reading methods."""

    eos_id = pad_id = None

    def __init__(self, names: list[str]):
        self.names = names

    def piece(self, i: int) -> str:
        if i < 0:  # tabular rows: the input is features, not a token
            return "(features)"
        return self.names[i] if i < len(self.names) else str(i)

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.piece(i) for i in ids)


def _missing_keys(shape: dict, raw: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in shape.items():
        if k not in raw:
            out.append(prefix + k)
        elif isinstance(v, dict):
            out += _missing_keys(v, raw[k], f"{prefix}{k}.")
    return out


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: not a run directory (does not exist)")
    for name in (CONFIG, SUMMARY, METRICS, BATCHES):
        if not (path / name).is_file():
            raise RunDirError(f"{path}: missing {name}; not a minitrain run, or it never started")
    from minitrain.core.config import Config, ConfigError, from_dict

    try:
        config = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
        from_dict(config if isinstance(config, dict) else {"": None}, str(path / CONFIG))
        missing = [k for k in _missing_keys(Config().to_dict(), config) if k not in ADDED_KEYS]
        if config.get("data", {}).get("kind", "corpus") in ("corpus", "mixture") and \
                not (path / TOKENIZER).is_file():
            raise RunDirError(f"{path}: missing {TOKENIZER}; not a minitrain run, or it never "
                              "started")
        if missing:  # the resolved config is written whole: a missing key means damage
            raise ConfigError(f"missing {', '.join(missing[:3])}")
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{path}: unreadable {CONFIG}: {first}") from None
    try:
        summary = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        summary = None
    if not isinstance(summary, dict):
        raise RunDirError(f"{path}: unreadable {SUMMARY}")
    metrics, batches = read_jsonl(path / METRICS), read_jsonl(path / BATCHES)
    moments = read_jsonl(path / MOMENTS) if (path / MOMENTS).is_file() else []
    # a hard kill can leave one log a step ahead of another: keep the steps all of them hold
    n = min(len(metrics), len(batches), len(moments) if moments else len(metrics))
    if not n:
        raise RunDirError(f"{path}: no complete step logged yet")
    return Run(path, config, summary, metrics[:n], batches[:n], moments[:n])
