"""The table of log kinds: every file a run writes step by step, who writes it, how a resume
trims it, and what each record must hold. rundir (names, what a new run replaces, what a
reader requires), checkpoint (the trim), the observers (the file each writes) and
docs/run-format.md (a test) all read it: adding a log kind is one entry here."""

from __future__ import annotations

from typing import NamedTuple


class LogKind(NamedTuple):
    name: str  # the file in the run directory
    writer: str  # the observer class that writes it (core/observe.py, core/probes.py)
    trim: str  # on resume: "lines" (one line per step from step 0: keep the first n),
    #            "step" (records stamped with a step: keep those before n), "records" (binary)
    keys: tuple[str, ...]  # what every record holds (a reader refuses a line without them)
    always: bool  # every instrumented run writes it; otherwise only some kinds or extra_logs
    step_key: str = "step"  # "step": the record's step; "updates": applied updates (step + 1)


METRICS, BATCHES, MOMENTS, TOKEN_LOSSES = (
    "metrics.jsonl", "batches.jsonl", "moments.jsonl", "token_losses.bin")
PHASES = "phases.jsonl"  # data.kind mixture: the mixer's phases
CLASSES, GEOMETRY, LAYERS = "classes.jsonl", "geometry.jsonl", "layers.jsonl"  # core/probes.py

LOGS = (
    LogKind(METRICS, "MetricsLog", "lines",
            ("step", "loss", "lr", "grad_norm_pre_clip", "grad_norm_post_clip", "clip_factor",
             "update_norm", "weight_norm", "train_loss", "val_loss", "tokens"), True),
    LogKind(BATCHES, "BatchLog", "lines", ("step", "sentence_ids", "words", "pieces"),
            True),
    LogKind(MOMENTS, "MomentLog", "lines", ("step", "tensors", "tracked",
                                                     "top_grad_rows"), False),
    LogKind(TOKEN_LOSSES, "TokenLossLog", "records", (), False),
    LogKind(PHASES, "PhaseLog", "step", ("step", "phase", "length", "lead", "weights"),
            False),
    LogKind(CLASSES, "ClassProbe", "step", ("step", "accuracy", "class_accuracy",
                                                     "probs"), False),
    LogKind(GEOMETRY, "EmbeddingGeometry", "step",
            ("step", "rows", "displacement", "angle_change_deg", "cosines",
             "participation_ratio", "effective_rank"), False),
    LogKind(LAYERS, "LayerProbe", "step", ("updates", "act_grad_norm",
                                                   "weight_grad_norm"), False, "updates"),
)


def record_step(kind: LogKind, record: dict) -> int:
    """The step a "step"-trimmed record belongs to."""
    return record[kind.step_key] - (1 if kind.step_key == "updates" else 0)
