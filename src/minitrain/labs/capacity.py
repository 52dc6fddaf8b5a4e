"""Capacity lab report: the damage a phase boundary does (loss and norm bump, recovery,
divergence) against the model's parameter count, without and with the clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.compare import update_page
from minitrain.labs import clip_label, fmt, load_runs, table
from minitrain.labs.shifts import measure

COLUMNS = ("status", "loss bump at boundaries (median)", "loss bump at boundaries (max)",
           "norm bump at boundaries (median)", "norm bump at boundaries (max)",
           "recovery steps (median)", "not back before the next boundary", "steps clipped",
           "diagnose: boundaries flagged", "final val loss")


def size(run) -> str:
    m = run.config["model"]
    return f"n_embd {m['n_embd']}, n_layer {m['n_layer']}"


def rows_of(runs) -> list[dict]:
    rows = []
    for run in runs:
        m = measure(run)
        rows.append({"size": size(run), "clip": clip_label(run), "seed": run.config["seed"],
                     **{k: v for k, v in m.items() if not k.startswith("_")}})
    return rows


def by_cell(rows: list[dict]) -> list[dict]:
    """Per size and clip setting: seeds pooled (mean of the per-run medians, counts summed)."""
    out = []
    for key in dict.fromkeys((r["size"], r["clip"]) for r in rows):
        rs = [r for r in rows if (r["size"], r["clip"]) == key]
        cell = {"size": key[0], "clip": key[1], "n_params": rs[0]["n_params"], "runs": len(rs),
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
    for clip in dict.fromkeys(c["clip"] for c in cells):
        cs = sorted((c for c in cells if c["clip"] == clip), key=lambda c: c["n_params"])
        parts = [f"{fmt(c['n_params'])} parameters: loss bump "
                 f"{fmt(c['loss bump at boundaries (median)'])}x, norm bump "
                 f"{fmt(c['norm bump at boundaries (median)'])}x, recovery "
                 f"{fmt(c['recovery steps (median)'])} steps, {c['diverged']} of "
                 f"{c['runs']} diverged" for c in cs]
        lines.append(f"- **{clip}**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def report(folder: str | Path, page: str | Path | None = None) -> list[dict]:
    from minitrain.labs import pictures

    runs = sorted(load_runs(folder, "mixture", "gpt"), key=lambda r: (
        r.summary["n_params"], r.config["optimizer"]["grad_clip"] is not None, r.config["seed"]))
    rows = rows_of(runs)
    cells = by_cell(rows)
    head = ["size", "clip", "n_params", "runs", "diverged", "boundaries", *COLUMNS[1:]]
    text_cells = table(head, [[c[k] for k in head] for c in cells])
    per_run = ["size", "clip", "seed", "n_params", *COLUMNS]
    text_runs = table(per_run, [[r[k] for k in per_run] for r in rows])
    said = summary_lines(cells)
    png = Path(folder) / "capacity.png"
    pictures.capacity_damage(rows, png)
    print(f"{said}\n\n{text_cells}\n\n{text_runs}\n\npicture: {png}")
    if page:
        update_page(page, "capacity-answers", said)
        update_page(page, "capacity", text_cells)
        update_page(page, "capacity-runs", text_runs)
    return cells
