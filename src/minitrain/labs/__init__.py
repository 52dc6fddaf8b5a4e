"""The small labs' reports: each reads the run directories a lab's recipe wrote, draws its
pictures and fills the `measured` blocks of its page (compare.update_page). Nothing here trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.rundir import Run, RunDirError, load_run


def load_runs(folder: str | Path, data_kind: str, model_kind: str) -> list[Run]:
    """Every run directory inside `folder` (at any depth), by path; each must be of the lab's
    data and model kind."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(f"{folder}: no such folder of runs")
    runs = [load_run(p.parent) for p in sorted(folder.rglob("summary.json"))]
    if not runs:
        raise RunDirError(f"{folder}: holds no run directories")
    for run in runs:
        kinds = run.config["data"].get("kind", "corpus"), run.config["model"].get("kind", "gpt")
        if kinds != (data_kind, model_kind):
            raise RunDirError(f"{run.path}: a {kinds[0]}/{kinds[1]} run; this lab reads "
                              f"{data_kind}/{model_kind} runs")
    return runs


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not np.isfinite(x):
        return "inf" if np.isinf(x) else "n/a"
    return f"{x:.{digits}g}"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; numbers through `fmt`, a `|` inside a cell escaped."""
    def cell(v) -> str:
        return fmt(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def clip_label(run: Run) -> str:
    c = run.config["optimizer"]["grad_clip"]
    return "no clip" if c is None else f"clip {c:g}"


def publish(rows: list[dict], intro: str, key: str, page=None, hide=("run",)) -> str:
    """One column per run (named by its "run" field), one row per measure; the intro above it;
    into the page's `<!-- measured:KEY -->` block when a page is given; printed."""
    from minitrain.reports.compare import update_page

    keys = [k for k in rows[0] if k not in hide]
    text = intro + "\n\n" + table(["", *(r["run"] for r in rows)],
                                  [[k, *(r[k] for r in rows)] for k in keys]) + "\n"
    if page:
        update_page(page, key, text)
    print(text)
    return text
