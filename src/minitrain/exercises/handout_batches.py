"""The handout's own setup over many seeds (experiments/19-handout-sweep): random batches of 8
over all 240 sentences from step 0, clip off and on. No arrival is engineered, so the question
is the handout's: how often does chance put several rare sentences in one batch, how large is
the norm there, does it spike, does anything end in NaN? Read per run at the batch holding the
most `written` sentences. A sweep file chooses it with `report: phase-19-handout`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core import rundir
from minitrain.exercises import phase19
from minitrain.labs.common import Runs
from minitrain.reports import pages
from minitrain.reports.measure import detect, judged_from, norm_ratios, thresholds
from minitrain.reports.pages import fmt

NAME, FOLDER, BLOCKS = "phase-19-handout", "19-break-no-clip", ("handout-sweep",)
RUNS = Runs("corpus", "gpt", arrival=False)  # random batches: nothing held back
SEVERAL = 3  # "several rare sentences in one batch": the handout's 3 or more


def run_row(run: rundir.Run) -> dict:
    words = np.array([sum((b.get("words") or {}).values()) for b in run.batches])
    step = int(np.argmax(words)) if len(words) else 0
    th = thresholds(run)
    events = detect(run.column("grad_norm_pre_clip"), judged_from(run, th), th)
    ratio = norm_ratios(run)[step] if step < len(run.metrics) else np.nan
    return {"status": run.summary["status"], "most_rare": int(words.max()) if len(words) else 0,
            "at_step": step, "batches_with_several": int((words >= SEVERAL).sum()),
            "ratio": float(ratio), "spiked_there": any(abs(e["step"] - step) <= 2 for e in events),
            "spikes": len(events), "diverged": run.summary["status"] == "diverged"}


def markdown(rows: list[dict]) -> str:
    head = ["cell", "runs", f"runs with a batch of >= {SEVERAL} rare sentences",
            "such batches in all", "most in one batch (median)",
            "norm ratio there (median, max)", "spiked there", "spikes anywhere", "NaN / diverged"]
    lines, read = [], []
    for label in dict.fromkeys(r["cell"] for r in rows):
        rs = [r for r in rows if r["cell"] == label and r["status"] != "missing"]
        if not rs:
            continue
        ratios = np.array([r["ratio"] for r in rs], float)
        ratios = ratios[np.isfinite(ratios)]
        several = sum(r["batches_with_several"] > 0 for r in rs)
        lines.append([label, len(rs), several, sum(r["batches_with_several"] for r in rs),
                      fmt(float(np.median([r["most_rare"] for r in rs])), ".2g"),
                      f"{fmt(float(np.median(ratios)), '.3g')}, {fmt(float(ratios.max()), '.3g')}"
                      if len(ratios) else "–",
                      sum(r["spiked_there"] for r in rs), sum(r["spikes"] for r in rs),
                      sum(r["diverged"] for r in rs)])
        read.append(f"{label}: {several} of {len(rs)} runs ever drew a batch with "
                    f"{SEVERAL} or more rare sentences, {sum(r['spiked_there'] for r in rs)} "
                    f"spiked at its rarest batch, {sum(r['diverged'] for r in rs)} ended in NaN")
    spiked = sum(r.get("spiked_there", False) for r in rows)
    split = ("No run spiked at its rarest batch, so the handout's 60% recover / 40% NaN split "
             "has nothing to split here." if not spiked else
             f"{spiked} of the runs spiked at their rarest batch, "
             f"{sum(r.get('diverged', False) for r in rows if r.get('spiked_there'))} of them "
             "ended in NaN.")
    return pages.table(head, lines) + "\n\nRead: " + "; ".join(read) + ". " + split + "\n"


def report(spec, page=()) -> dict:
    rows = phase19.collect(spec, run_row, RUNS, NAME)
    text = markdown(rows) + "\n" + phase19.made_on(spec)
    where = Path(spec.path).parent
    (where / "summary.md").write_text(text, encoding="utf-8")
    for p in [page] if isinstance(page, (str, Path)) else page or ():
        pages.update_page(p, spec.block, text)
    return {"blocks": {spec.block: text}, "measured": rows,
            "files": {"summary": where / "summary.md"}}
