"""Phase 19's handout beside our runs: one row per claim of the handout (its figures, quoted)
and what Run A, Run B, Run C and the 20-seed sweep measured, filled into the exercise page's
`handout-vs-ours` block by `just phase-19-report`.

    python -m minitrain.exercises.handout [--experiments DIR] [--page PAGE]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from minitrain.core.config import ConfigError
from minitrain.core.rundir import Run, RunDirError, load_run
from minitrain.reports import pages
from minitrain.reports.measure import (
    WINDOW,
    judged_from,
    spike_step,
    summarise,
    thresholds,
    top_tokens,
)
from minitrain.reports.pages import fmt

BLOCK = "handout-vs-ours"
RUNS = {"a": "19-control", "b": "19-break-no-clip", "c": "19-clip-at-arrival"}
SWEEP, SWEEP_CELL = "19-sweep", "no clip (Run B)"
LINE = "clip_factor = min(1.0, self.clip / (g_norm + 1e-12))"  # the line the handout edits
# the handout's figures, quoted from its text (the phase-19 break/fix note)
HANDOUT = {
    "spike step": "\"step ~312\"",
    "norm ratio at the spike": "\"30-80× the baseline\"; pre-clip \"~50\"",
    "loss at the spike": "\"from ~2.3 to ~12+\"; then \"0.5-1.0 worse than Run A\"",
    "recover / NaN": "\"60% probable\" recover slowly, \"40% probable\" NaN",
    "baseline norm": "\"baseline ~0.6\"",
    "how often the clip acts": "\"most steps are uneffected\"",
    "the rare piece": "`tten` (from *written*)",
    "where the code break is": "`src/minitrain/loop.py`: `clip_factor = 1.0`",
}


def _n(x) -> str:
    return fmt(x, ".3g")


def _pct(x) -> str:
    return fmt(float(x), ".0%")


def spike(a: Run, b: Run) -> dict:
    """Where Run A and B spike and what their compare summaries say there."""
    step = spike_step(a, b)
    if step is None or step >= min(len(a.metrics), len(b.metrics)):
        raise RunDirError(f"{b.path}: no spike step within both runs")
    return {"step": step, "a": summarise(a, step), "b": summarise(b, step)}


def clipped(run: Run, start: int, end: int | None = None) -> float:
    """Share of the steps in [start, end) on which the clip acted (post-clip below pre-clip)."""
    g, post = run.column("grad_norm_pre_clip")[start:end], run.column("grad_norm_post_clip")[
        start:end]
    return float(np.mean(post < g * (1 - 1e-9))) if len(g) else np.nan


def rare_piece(b: Run, step: int) -> str:
    """The tracked word's pieces (the run's own tokenizer) and how the spike batch's loss ranks
    them; whether the handout's `tten` is a piece of this vocabulary at all."""
    tok, words = b.tokenizer(), b.config["data"]["tracked_words"]
    pieces = [tok.piece(i) for w in words for i in tok.word_pieces(w)]
    ranked = top_tokens(b, step, k=10_000)
    where = []
    for p in dict.fromkeys(pieces):
        rank = next((i for i, (q, _, _) in enumerate(ranked) if q == p), None)
        if rank is not None:
            _, total, n = ranked[rank]
            where.append(f"`{p}` is loss carrier no. {rank + 1} at step {step} "
                         f"({_n(total)} nats over {n} positions)")
    has_tten = tok.hf.token_to_id("tten") is not None
    words_text = ", ".join(f"*{w}*" for w in words)
    count = "one piece" if len(pieces) == 1 else f"{len(pieces)} pieces"
    return (f"{words_text} is {count}: {', '.join(f'`{p}`' for p in pieces)}; "
            f"{'; '.join(where) or 'no loss there'}; "
            f"`tten` is {'a' if has_tten else 'not a'} piece of this vocabulary")


def code_break() -> str:
    """Where the clip line is in the loop's source, and that it is inside the fenced step."""
    from minitrain import loop

    path = Path(loop.__file__)
    text = path.read_text(encoding="utf-8").splitlines()
    begin = next(i for i, ln in enumerate(text) if "TRAINING STEP BEGIN" in ln)
    end = next(i for i, ln in enumerate(text) if "TRAINING STEP END" in ln)
    at = [i for i, ln in enumerate(text) if ln.strip() == LINE and begin < i < end]
    if len(at) != 1:
        raise RunDirError(f"{path}: the clip line is not once inside the fenced step")
    return (f"`src/minitrain/loop.py:{at[0] + 1}`, `Loop.step`, inside the fence (lines "
            f"{begin + 1}-{end + 1}); or the config: `optimizer.grad_clip: null`")


def read_sweep(folder: Path, page: Path | None) -> tuple[dict | None, str]:
    """The sweep's Run B row: the page's sweep block (what the page shows, on any checkout),
    else the sweep's summary.csv if it ran here (the same table, written by the same report);
    (None, why) when neither has it."""
    if page is not None and "sweep" in pages.blocks(page):
        rows = pages.table_rows(pages.block_text(page, "sweep"))
        return rows.get(SWEEP_CELL), "the sweep block below"
    csv_path = folder / "summary.csv"
    if csv_path.is_file():
        rows = {r["cell"]: r for r in csv.DictReader(csv_path.open(encoding="utf-8"))}
        return rows.get(SWEEP_CELL), f"`experiments/{folder.name}/summary.csv`"
    return None, "not measured yet: run `just phase-19-sweep`"


def _sweep_cell(row: dict | None) -> str:
    if row is None:
        return "not measured yet: run `just phase-19-sweep`"
    back = row["median recovery steps"]
    back = "" if back in ("no rise", "–") else (f" (median {back} steps back within 10% of "
                                                f"the rise)")
    return (f"{row['runs']} seeds without the clip: {row['diverged']} NaN; "
            f"{row['rise > 0.1']} with a whole-set rise > 0.1, {row['not back by the end']} "
            f"not back by the run's end{back}")


def rows(a: Run, b: Run, c: Run, sweep: tuple[dict | None, str]) -> list[list[str]]:
    """[claim, the handout's figure, ours, where ours is from], one per claim."""
    s = spike(a, b)
    step, sa, sb = s["step"], s["a"], s["b"]
    cfg = b.config["data"]
    words = b.batches[step]["words"]
    held = ", ".join(f"{n} *{w}* sentences" for w, n in words.items())
    start = judged_from(a, thresholds(a))
    guard_from = c.config["optimizer"].get("clip_from_step") or 0
    after = len(b.metrics) - 1 - step
    ours = {
        "spike step": f"{step}: `data.sampler: {cfg['sampler']}` holds back {held} until "
                      f"`data.arrive_step` = {cfg['arrive_step']}, then gives them in one batch",
        "norm ratio at the spike": f"Run B {_n(sb['ratio'])}× (pre-clip "
                                   f"{_n(sb['grad_norm_pre_clip'])}); Run A {_n(sa['ratio'])}×",
        "loss at the spike": f"Run B's batch loss {_n(sb['loss_before'])} → {_n(sb['loss_at'])}; "
                             f"whole set {_n(sb['whole_before'])} → {_n(sb['whole_worst_after'])} "
                             f"(Run A {_n(sa['whole_before'])} → {_n(sa['whole_worst_after'])}); "
                             f"{after} steps later Run B ends "
                             f"{_n(sb['whole_final'] - sa['whole_final'])} above Run A",
        "recover / NaN": _sweep_cell(sweep[0]),
        "baseline norm": f"Run B {_n(sb['baseline_median'])}, Run A {_n(sa['baseline_median'])} "
                         f"(median of the {WINDOW} steps before the spike)",
        "how often the clip acts": f"Run A clips {_pct(clipped(a, start, step))} of its ordinary "
                                   f"steps (from step {start} to the arrival); Run C "
                                   f"{_pct(clipped(c, start, guard_from))} before step "
                                   f"{guard_from}, {_pct(clipped(c, guard_from))} from it on",
        "the rare piece": rare_piece(b, step),
        "where the code break is": code_break(),
    }
    where = {
        "spike step": f"`{b.name}`: the largest norm ratio; its batch log",
        "norm ratio at the spike": f"compare's `ratio`, `grad_norm_pre_clip` ({b.name}, {a.name})",
        "loss at the spike": "compare's `loss_before`, `loss_at`, `whole_*`",
        "recover / NaN": sweep[1] if sweep[0] is not None else "`experiments/19-sweep/`",
        "baseline norm": "compare's `baseline_median`",
        "how often the clip acts": f"pre- and post-clip norms of `{a.name}`, `{c.name}`",
        "the rare piece": f"`{b.name}`'s tokenizer and token losses",
        "where the code break is": "the source; `tests/test_phase19.py` makes the edit",
    }
    return [[k, HANDOUT[k], ours[k], where[k]] for k in HANDOUT]


def markdown(table: list[list[str]], seed: int) -> str:
    return pages.table(["claim", "the handout", f"ours (seed {seed})", "from"], table)


def report(experiments: Path, page: Path | None = None) -> str:
    """The block from the runs under `experiments`; written into `page` when given."""
    runs = {k: load_run(experiments / name) for k, name in RUNS.items()}
    table = rows(runs["a"], runs["b"], runs["c"], read_sweep(experiments / SWEEP, page))
    text = markdown(table, runs["b"].config["seed"])
    if page is not None:
        pages.update_page(page, BLOCK, text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitrain.exercises.handout",
                                description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default="experiments", help="folder of the runs")
    p.add_argument("--page", help=f"page whose '<!-- measured:{BLOCK} -->' block to fill")
    args = p.parse_args(argv)
    try:
        text = report(Path(args.experiments), Path(args.page) if args.page else None)
    except (RunDirError, ConfigError) as e:
        print(f"handout: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # a run directory of another kind (no tracked word, no arrival)
        print(f"handout: {args.experiments}: the runs lack {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
