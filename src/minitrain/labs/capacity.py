"""Capacity lab report: the damage a phase boundary does (loss and norm bump, recovery,
divergence) against the model's parameter count, without and with the clip, per learning rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.labs.common import Runs, clip_label
from minitrain.labs.shifts import measure, shifts
from minitrain.reports.pages import fmt, table, update_page

NAME, FOLDER, BLOCKS = "capacity", "capacity", ("capacity-answers", "capacity", "capacity-runs")
RUNS = Runs("mixture", "gpt", differ=("model.n_embd", "model.n_layer"))

COLUMNS = ("status", "loss bump at boundaries (median)", "loss bump at boundaries (max)",
           "norm bump at boundaries (median)", "norm bump at boundaries (max)",
           "recovery steps (median)", "not back before the next boundary", "steps clipped",
           "diagnose: boundaries flagged", "whole-set train loss before the first boundary",
           "final whole-set train loss", "final val loss")


def size(run) -> str:
    m = run.config["model"]
    placebo = "" if shifts(run) else ", equal weights (placebo)"
    return f"n_embd {m['n_embd']}, n_layer {m['n_layer']}{placebo}"


def rows_of(runs) -> list[dict]:
    rows = []
    for run in runs:
        m = measure(run)
        rows.append({"size": size(run), "lr": run.config["optimizer"]["lr"],
                     "clip": clip_label(run), "seed": run.config["seed"], "shifts": shifts(run),
                     **{k: v for k, v in m.items() if not k.startswith("_")}})
    return rows


def by_cell(rows: list[dict]) -> list[dict]:
    """Per size, learning rate and clip setting: seeds pooled (mean of the per-run values,
    counts summed)."""
    out = []
    for key in dict.fromkeys((r["size"], r["lr"], r["clip"]) for r in rows):
        rs = [r for r in rows if (r["size"], r["lr"], r["clip"]) == key]
        cell = {"size": key[0], "lr": key[1], "clip": key[2], "n_params": rs[0]["n_params"],
                "shifts": rs[0]["shifts"], "runs": len(rs),
                "diverged": sum(r["status"] == "diverged" for r in rs),
                "boundaries": sum(r["boundaries"] for r in rs)}
        for k in COLUMNS[1:]:
            v = np.array([np.nan if r[k] is None else r[k] for r in rs], float)
            total = k.startswith(("not back", "diagnose"))
            cell[k] = int(np.nansum(v)) if total else float(np.nanmean(v))
        out.append(cell)
    return out


def summary_lines(cells: list[dict]) -> str:
    lines = []
    for lr, clip in dict.fromkeys((c["lr"], c["clip"]) for c in cells):
        cs = sorted((c for c in cells if (c["lr"], c["clip"]) == (lr, clip)),
                    key=lambda c: (c["n_params"], not c["shifts"]))
        parts = [f"{fmt(c['n_params'])} parameters{'' if c['shifts'] else ' (placebo)'}: loss bump "
                 f"{fmt(c['loss bump at boundaries (median)'])}x, norm bump "
                 f"{fmt(c['norm bump at boundaries (median)'])}x, recovery "
                 f"{fmt(c['recovery steps (median)'])} steps, whole-set loss "
                 f"{fmt(c['whole-set train loss before the first boundary'])} before the first "
                 f"boundary and {fmt(c['final whole-set train loss'])} at the end, "
                 f"{c['diverged']} of {c['runs']} diverged" for c in cs]
        lines.append(f"- **lr {lr:g}, {clip}**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    from minitrain.labs import pictures

    runs = sorted(RUNS.load(folder, NAME), key=lambda r: (
        r.config["optimizer"]["lr"], r.summary["n_params"], not shifts(r),
        r.config["optimizer"]["grad_clip"] is not None, r.config["seed"]))
    rows = rows_of(runs)
    cells = by_cell(rows)
    head = ["size", "lr", "clip", "n_params", "runs", "diverged", "boundaries", *COLUMNS[1:]]
    text_cells = table(head, [[c[k] for k in head] for c in cells])
    per_run = ["size", "lr", "clip", "seed", "n_params", *COLUMNS]
    text_runs = table(per_run, [[r[k] for k in per_run] for r in rows])
    said = summary_lines(cells)
    png = Path(folder) / "capacity.png"
    pictures.capacity_damage([r for r in rows if r["shifts"]], png)
    print(f"{said}\n\n{text_cells}\n\n{text_runs}\n\npicture: {png}")
    blocks = {"capacity-answers": said, "capacity": text_cells, "capacity-runs": text_runs}
    for key, text in blocks.items():
        if page:
            update_page(page, key, text)
    return {"blocks": blocks, "measured": cells}
