"""The observers that turn each step's record into files and a progress line, and `build`,
which picks them from the config. The loop never asks what is being logged; it calls `on_step`
on each observer.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from minitrain.core import rundir, zoo
from minitrain.core.config import Config
from minitrain.core.data import IGNORE
from minitrain.core.optim import Optimizer
from minitrain.core.probes import ClassProbe, EmbeddingGeometry, LayerProbe
from minitrain.core.record import Observer, Writer


class MetricsLog(Writer):
    """metrics.jsonl: one line of scalars per step."""

    def __init__(self, out: Path, params: list[torch.Tensor], split: bool = False):
        self.w = rundir.JsonlWriter(out / rundir.METRICS)
        self.params = params
        self.split = split  # the training set's loss also over its rare and common sentences

    def capture(self, r):
        with torch.no_grad():  # a new tensor: the weights may change before it is read
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.params)))

    def write(self, r, weight_norm):
        s = r.stats
        self.w.write({
            "step": r.step, "loss": r.loss, "lr": r.lr,
            "grad_norm_pre_clip": s.grad_norm_pre_clip,
            "grad_norm_post_clip": s.grad_norm_post_clip,
            "clip_factor": s.clip_factor, "update_norm": s.update_norm,
            "update_max": s.update_max,
            "skipped": s.skipped, "grad_z": None if math.isnan(s.grad_z) else s.grad_z,
            "weight_norm": float(weight_norm),
            "train_loss": r.train_loss, "val_loss": r.val_loss,
            **({"train_loss_rare": r.train_loss_rare, "train_loss_common": r.train_loss_common}
               if self.split else {}),
            "tokens": r.n_tokens,  # no timings here: same config and seed, same bytes
            **({} if r.loss_scale is None else {"loss_scale": r.loss_scale}),
        })

    def close(self):
        self.w.close()


class BatchLog(Writer):
    """batches.jsonl: which sentences each step saw, and how many tracked words/pieces."""

    def __init__(self, out: Path, tracked_sentences: dict[str, set[int]],
                 tracked_pieces: dict[str, int], source_of: list[str] | None = None):
        self.w = rundir.JsonlWriter(out / rundir.BATCHES)
        self.tracked_sentences, self.tracked_pieces = tracked_sentences, tracked_pieces
        self.source_of = source_of  # mixture: each sentence's source, written per row

    def on_step(self, r):
        b = r.batch
        ids = b.sentence_ids
        # packed: the sentences the rows touch, from the spans (the loop puts the sampler's
        # ids, here window ids, into sentence_ids)
        if b.spans is not None:
            ids = list(dict.fromkeys(s for row in b.spans for s, _, _ in row))
        x = b.x.numpy()  # NumPy: on arrays this small a torch op costs several times more
        row = {
            "step": r.step, "sentence_ids": ids,
            "words": {w: sum(i in s for i in ids) for w, s in self.tracked_sentences.items()},
            "pieces": {p: int(np.count_nonzero(x == pid))
                       for p, pid in self.tracked_pieces.items()},
        }
        if b.spans is not None:  # and the windows, so that a replay can rebuild the batch
            row["spans"], row["windows"] = b.spans, b.sentence_ids
        if self.source_of is not None:
            row["sources"] = [self.source_of[i] for i in ids]
        self.w.write(row)

    def close(self):
        self.w.close()


class PhaseLog(Writer):
    """phases.jsonl: one line per mixer phase, written at its first step."""

    def __init__(self, out: Path, sampler):
        self.w = rundir.JsonlWriter(out / rundir.PHASES)
        self.sampler = sampler

    def capture(self, r):  # the mixer's phase as it is now: a new one may start next step
        phase = self.sampler.phase
        return copy.deepcopy(phase) if phase["step"] == r.step else None

    def write(self, r, phase):
        if phase is not None:
            self.w.write(phase)

    def close(self):
        self.w.close()


class TokenLossLog(Writer):
    """token_losses.bin: (step, row, pos, sentence, token, target, loss) per scored position."""

    def __init__(self, out: Path):
        self.w = rundir.TokenLossWriter(out / rundir.TOKEN_LOSSES)

    def on_step(self, r):
        # in NumPy (the tensors are on the CPU): its indexing costs less per call than torch's
        y = r.batch.y.numpy()
        scored = y != IGNORE  # a mask picks in the order nonzero lists: row by row
        rows, pos = np.nonzero(scored)
        rec = np.empty(len(rows), rundir.TOKEN_LOSS_DTYPE)
        rec["step"] = r.step
        rec["row"] = rows
        if r.batch.sentence is None:  # a row is one sentence
            rec["sentence"] = np.asarray(r.batch.sentence_ids)[rows]
        else:  # packed: the sentence of each position's target
            rec["sentence"] = r.batch.sentence.numpy()[scored]
        rec["pos"] = pos
        x = r.batch.x  # token ids; tabular rows hold features, which are no token: -1
        rec["token"] = -1 if x.is_floating_point() else x.numpy()[scored]
        rec["target"] = y[scored]
        rec["loss"] = r.token_loss.detach().numpy()[scored]
        self.w.write(rec)

    def close(self):
        self.w.close()


def host_lists(parts: dict) -> dict:
    """Each 1-D tensor of `parts` as a list of numbers, by one cat and one copy to the host:
    on a small model every torch op costs microseconds of dispatch, more than its arithmetic."""
    values = torch.cat(list(parts.values())).tolist()
    out, i = {}, 0
    for key, t in parts.items():
        out[key], i = values[i:i + len(t)], i + len(t)
    return out


class MomentLog(Writer):
    """moments.jsonl: per tensor the norms of grad, m and v and the max of v; for the tracked
    pieces their rows in each vocabulary table (input embedding `wte`, and the head when it is
    not tied): grad, m and v; the embedding rows with the largest gradient."""

    def __init__(self, out: Path, opt: Optimizer, names: list[str], tables: dict[str, torch.Tensor],
                 tracked_pieces: dict[str, int], top_rows: int = 5):
        self.w = rundir.JsonlWriter(out / rundir.MOMENTS)
        self.opt, self.names = opt, names
        index = {id(p): i for i, p in enumerate(opt.params)}
        self.tables = {name: index[id(t)] for name, t in tables.items()}
        self.tracked, self.top_rows = tracked_pieces, top_rows
        self.rows = torch.tensor(list(tracked_pieces.values()), dtype=torch.long,
                                 device=opt.m[0].device)
        self.has_v = opt.v is not None  # SGD has no second moment
        self.per_tensor = ("grad_norm", "m_norm") + (("v_norm", "v_max") if self.has_v else ())
        self.row_keys = ("grad_norm", "m_norm") + (("v_mean", "v_max") if self.has_v else ())
        n_top = min(top_rows, len(tables["wte"])) if "wte" in tables else 0
        S = rundir.SLOT
        self.line = rundir.LineTemplate({
            "step": S,
            "tensors": {name: dict.fromkeys(self.per_tensor, S) for name in names},
            "tracked": {p: {"id": i, **{t: dict.fromkeys(self.row_keys, S) for t in tables}}
                        for p, i in tracked_pieces.items()},
            "top_grad_rows": [[S, S]] * n_top})

    def capture(self, r):
        """The statistics of the moments now (they change in place next step), as tensors:
        computed where the tensors are, so nothing is copied, and read back in `write` with
        one transfer. p.grad is the raw (pre-clip) gradient."""
        opt = self.opt
        m, v = opt.m_flat.data, opt.v_flat.data if self.has_v else None
        parts = {"m_norm": opt.m_flat.norms(m),
                 "grad_norm": r.stats.tensor_grad_norms.to(m.dtype)}
        if self.has_v:
            parts["v_norm"], parts["v_max"] = opt.v_flat.norms(v), opt.v_flat.maxes(v)
        top = None  # a model without a vocabulary table has no rows to rank
        for table, k in self.tables.items():
            row_norms = torch.linalg.vector_norm(opt.params[k].grad, dim=1)
            if table == "wte":
                top = torch.topk(row_norms, min(self.top_rows, len(row_norms)))
                # float64 holds any row index exactly; the cat promotes the rest to it
                parts["top"], parts["top_rows"] = top.values, top.indices.double()
            parts.update(self._row_stats(table, k, row_norms, m, v))
        return parts, top is not None

    def write(self, r, captured):
        parts, has_top = captured
        x = host_lists(parts)
        # the numbers in the line's order: per tensor, per tracked piece and table, top rows
        numbers = [r.step, *chain.from_iterable(zip(*(x[key] for key in self.per_tensor)))]
        for j in range(len(self.tracked)):
            for table in self.tables:
                numbers += (x[table, key][j] for key in self.row_keys)
        if has_top:
            numbers += chain.from_iterable(zip(map(int, x["top_rows"]), x["top"]))
        self.w.write_line(self.line.fill(numbers))

    def _row_stats(self, table: str, k: int, row_norms: torch.Tensor, m: torch.Tensor,
                   v: torch.Tensor | None) -> dict:
        """The tracked rows of table `table` (parameter k): each statistic one op over all of
        them (a row's norm, mean or max has the same bits taken alone or with its table)."""
        if not self.tracked:
            return {}
        opt, rows = self.opt, self.rows
        stats = [row_norms[rows], torch.linalg.vector_norm(opt.m_flat.view_of(m, k)[rows], dim=1)]
        if self.has_v:
            v = opt.v_flat.view_of(v, k)[rows]
            stats += [v.mean(dim=1), v.amax(dim=1)]
        return {(table, key): x for key, x in zip(self.row_keys, stats)}

    def close(self):
        self.w.close()


class Progress(Observer):
    """The live console line: step, loss, grad norm, clip factor, tokens/s."""

    def __init__(self, total_steps: int, title: str, start: int = 0):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True)
        self.t0, self.tokens = time.perf_counter(), 0
        self.title, self.total = title, total_steps
        # piped or redirected, a bar would be redrawn into the file cut to 80 columns: write a
        # plain line every tenth of the run instead
        self.every = None if self.console.is_terminal else max(1, total_steps // 10)
        if self.every:
            return
        self.bar = RichProgress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[line]}"), console=self.console,
                                transient=False, refresh_per_second=8)
        self.task = self.bar.add_task("train", total=total_steps, completed=start, line="")
        self.bar.start()

    def on_step(self, r):
        self.tokens += r.n_tokens
        tok_s = self.tokens / max(1e-9, time.perf_counter() - self.t0)
        s = r.stats
        line = (f"loss {r.loss:7.4f} | norm {s.grad_norm_pre_clip:9.3f} | "
                f"clip {s.clip_factor:5.3f} | lr {r.lr:.2e} | {tok_s:8.0f} tok/s")
        if self.every is None:
            self.bar.update(self.task, completed=r.step + 1, line=line)
        elif (r.step + 1) % self.every == 0 or r.step + 1 == self.total:
            print(f"{self.title} step {r.step + 1}/{self.total} | {line}", file=sys.stderr,
                  flush=True)

    def close(self):
        if self.every is None:
            self.bar.stop()


def build(cfg: Config, out: Path, ds, model, opt: Optimizer, names: list[str], sampler,
          start: int, progress: bool, writer: bool, split=()) -> list[Observer]:
    """The observers a config asks for; only rank 0 (`writer`) has any."""
    if not writer:
        return []
    observers: list[Observer] = []
    if cfg.train.instrument:
        observers += [MetricsLog(out, opt.params, split=bool(split)),
                      BatchLog(out, ds.tracked, ds.pieces, ds.source_of)]
        if ds.source_of is not None:
            observers.append(PhaseLog(out, sampler))
        if "token_losses" in cfg.train.extra_logs:
            observers.append(TokenLossLog(out))
        if "moments" in cfg.train.extra_logs:
            observers.append(MomentLog(out, opt, names, zoo.vocab_tables(model), ds.pieces))
        observers += lab_probes(cfg, ds, model, out, start)
    if progress:
        observers.append(Progress(cfg.train.steps, out.name, start))
    return observers


def lab_probes(cfg: Config, ds, model, out: Path, start: int) -> list[Observer]:
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
