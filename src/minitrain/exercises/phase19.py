"""Phase 19's sweep table: Run B's setup over many seeds and fixes, read back one row per run
(did the arrival spike, how far the whole-set loss rose, how fast it came back: counted only
after a rise above measure.MIN_RISE, else "no rise") and one line per cell, with a picture.
A sweep file chooses it with `report: phase-19`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from minitrain.core import config as config_mod
from minitrain.core import rundir
from minitrain.labs.common import Runs
from minitrain.reports import pages
from minitrain.reports.measure import (
    MIN_RISE,
    detect,
    judged_from,
    norm_ratios,
    thresholds,
    whole_set_around,
)
from minitrain.reports.pages import fmt
from minitrain.tools import sweep

NAME, FOLDER, BLOCKS = "phase-19", "19-break-no-clip", ("sweep", "sweep-guard")
RUNS = Runs("corpus", "gpt", arrival=True)  # the rare data arrives within every run


def event_step(cfg: dict) -> int | None:
    """The step where the spec's rare data arrives, from the run's config."""
    data = cfg["data"]
    if data["sampler"].startswith("arrival"):
        return data["arrive_step"]
    return None


def run_row(run: rundir.Run) -> dict:
    """One run of the sweep: its status, clipping and skips, and at the arrival its spike,
    norm ratio and whole-set loss damage."""
    step = event_step(run.config)
    th = thresholds(run)
    g = run.column("grad_norm_pre_clip")
    post = run.column("grad_norm_post_clip")
    start = judged_from(run, th)
    events = detect(g, start, th) if step is not None else []
    ordinary = np.arange(len(g)) >= start
    if step is not None:
        ordinary &= np.arange(len(g)) < step
    clip = run.config["optimizer"]["grad_clip"]
    row = {"status": run.summary["status"], "steps": len(run.metrics),
           "clip": np.nan if clip is None else float(clip),  # a suggested one is per seed
           "diverged": run.summary["status"] == "diverged",
           "clipped_ordinary": float(np.mean(post[ordinary] < g[ordinary] * (1 - 1e-9)))
           if ordinary.any() else np.nan,
           "skipped_steps": int(sum(bool(m.get("skipped")) for m in run.metrics))}
    if step is None or step >= len(g):
        return row
    around = whole_set_around(run, step, MIN_RISE)
    final = run.column("train_loss")
    final = final[np.isfinite(final)]
    row.update({
        "ordinary_norm": float(np.median(g[max(start, step - 50):step])) if step > start
        else np.nan,
        "spiked": any(step <= e["step"] <= step + 5 for e in events),
        "spiked_later": any(e["step"] > step + 5 for e in events),
        "ratio": float(norm_ratios(run)[step]),
        "whole_before": around["whole_before"], "whole_rise": around["whole_rise"],
        "recovery_steps": around["whole back within 10% of rise, steps"],  # or "no rise"
        # the rise split: the common sentences forgotten, the rare ones learned (nan when the
        # run logs no split)
        **{f"{part}_rise": whole_set_around(run, step, key=f"train_loss_{part}")["whole_rise"]
           for part in ("common", "rare")},
        "final_gap": float(final[-1] - around["whole_before"]) if len(final) else np.nan,
    })
    return row


COLUMNS = ["cell", "seed", "status", "clip", "spiked", "spiked_later", "diverged",
           "ordinary_norm", "ratio", "whole_before", "whole_rise", "common_rise", "rare_rise",
           "recovery_steps", "final_gap", "clipped_ordinary", "skipped_steps"]


def collect(spec, row=run_row, reads: Runs = RUNS, name: str = NAME) -> list[dict]:
    """One row per run of the sweep `spec` (`row(run)`, for runs `reads` accepts); a run not
    there yet is "missing". The handout sweep's table reads its runs through it too."""
    rows = []
    for label, overrides, path in spec.runs():
        seed = config_mod.load(spec.base, sweep.stand_in(overrides)).seed
        try:
            run = rundir.load_run(path)
        except rundir.RunDirError:  # not trained yet
            rows.append({"cell": label, "seed": seed, "status": "missing"})
            continue
        why = reads.refusal([run])
        if why:
            raise rundir.RunDirError(f"{spec.path}: not runs the {name} table reads: {why}")
        rows.append({"cell": label, "seed": seed, **row(run)})
    return rows


def _median(values) -> float:
    v = np.array([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else np.nan


def cell_table(rows: list[dict]) -> list[dict]:
    out = []
    for label in dict.fromkeys(r["cell"] for r in rows):
        rs = [r for r in rows if r["cell"] == label and r["status"] != "missing"]
        rose = [r for r in rs if (r.get("whole_rise") or 0) > MIN_RISE]  # nan: not rose
        never = sum(r.get("recovery_steps") is None for r in rose)
        out.append({
            "cell": label, "runs": len(rs),
            "spiked": sum(bool(r.get("spiked")) for r in rs),
            "spiked later": sum(bool(r.get("spiked_later")) for r in rs),
            "diverged": sum(r["diverged"] for r in rs),
            "ordinary norm": _median(r.get("ordinary_norm") for r in rs),
            "median clip": _median(r.get("clip") for r in rs),
            "median ratio": _median(r.get("ratio") for r in rs),
            "median whole-set rise": _median(r.get("whole_rise") for r in rs),
            "common sentences": _median(r.get("common_rise") for r in rs),
            "rare sentences": _median(r.get("rare_rise") for r in rs),
            f"rise > {MIN_RISE:g}": len(rose),
            "median recovery steps": _median(r.get("recovery_steps") for r in rose) if rose
            else "no rise",
            "not back by the end": never,
            "median final - before": _median(r.get("final_gap") for r in rs),
            "clipped ordinary steps": _median(r.get("clipped_ordinary") for r in rs),
            "skipped steps": _median(r.get("skipped_steps") for r in rs),
        })
    return out


def _fmt(x) -> str:
    return fmt(x, nonfinite="–", tiny=".2e")


def markdown(table: list[dict]) -> str:
    head = list(table[0])
    rows = [[_fmt(row[k]) if k != "clipped ordinary steps" or not np.isfinite(row[k])
             else fmt(row[k], ".0%") for k in head] for row in table]
    rule = (f"Recovery columns: over the runs with a whole-set rise > {MIN_RISE:g} only "
            "(\"no rise\" when there is none). *common sentences*, *rare sentences*: the median "
            "rise of the whole-set loss over the training sentences without the rare word and "
            "over those with it (a fall is negative).")
    return pages.table(head, rows) + "\n\n" + rule + "\n"


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(v) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def made_on(spec) -> str:
    """The line under a sweep block saying what made it: the runs' machine is the reader's
    (the sweep trains and reads on one), the commit is the code that read them."""
    path = Path(spec.path).resolve()
    path = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    return (f"Made by `minitrain sweep {path.as_posix()}` on {pages.machine()} at commit "
            f"{pages.commit(spec.path.parent)}.\n")


def report(spec, page=()) -> dict:
    """Write results.csv (per run), summary.csv/.md (per cell) and sweep.png next to the sweep
    file `spec`; fill the spec's measured block (`sweep` unless it names another) of each
    page in `page` (one or a list)."""
    rows = collect(spec)
    table = cell_table(rows)
    where = spec.path.parent
    (where / "results.csv").write_text(to_csv(rows, COLUMNS), encoding="utf-8")
    (where / "summary.csv").write_text(to_csv(table, list(table[0])), encoding="utf-8")
    text = markdown(table) + "\n" + made_on(spec)
    (where / "summary.md").write_text(text, encoding="utf-8")
    picture(rows, where / "sweep.png")
    for p in [page] if isinstance(page, (str, Path)) else page or ():
        pages.update_page(p, spec.block, text)
    return {"blocks": {spec.block: text}, "measured": table,
            "files": {"per run": where / "results.csv", "picture": where / "sweep.png"}}


def picture(rows: list[dict], png: Path) -> None:
    """Per cell, every seed's norm ratio at the arrival and whole-set loss rise (dots) with the
    cell's median (bar); diverged runs in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, ax = plt.subplots(1, 2, figsize=(13, 0.6 * len(cells) + 2.5), sharey=True)
    for panel, key, title in ((ax[0], "ratio", "grad-norm ratio at the arrival (x median)"),
                              (ax[1], "whole_rise", "whole-set loss rise after it (nats)")):
        for y, cell in enumerate(cells):
            rs = [r for r in rows if r["cell"] == cell and r.get(key) is not None]
            vals = np.array([r[key] for r in rs], float)
            ok = np.isfinite(vals)
            if ok.any():
                panel.barh(y, np.median(vals[ok]), color="0.85", height=0.6)
            jitter = np.linspace(-0.2, 0.2, len(rs)) if len(rs) > 1 else np.zeros(len(rs))
            colors = ["tab:red" if r.get("diverged") else "tab:blue" for r in rs]
            panel.scatter(np.where(ok, vals, np.nan), y + jitter, s=12, c=colors, zorder=3)
        panel.set_title(title)
        panel.grid(axis="x", alpha=0.3)
    ax[0].set_xscale("log")
    ax[1].axvline(0, color="0.4", lw=0.8)
    ax[0].set_yticks(range(len(cells)), cells)
    ax[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
