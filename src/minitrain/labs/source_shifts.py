"""Source-shifts lab report: the loss and gradient-norm bumps at the mixer's phase boundaries,
without and with the clip, for the seeded schedule and the bandit, and what `diagnose` finds."""

from __future__ import annotations

from pathlib import Path

from minitrain.labs.common import Runs, clip_label
from minitrain.labs.shifts import LOOSE, measure, shifts
from minitrain.reports.pages import fmt, table, update_page

NAME, FOLDER, BLOCKS = "source-shifts", "source-shifts", ("source-shifts-answers", "source-shifts")
RUNS = Runs("mixture", "gpt", same=("model.n_embd", "model.n_layer"))  # one size: capacity's


def _label(run) -> str:
    kind = run.config["data"]["schedule"] if shifts(run) else "equal weights"
    return f"{kind} {clip_label(run)}"


def answers(labels: list[str], results: list[dict]) -> str:
    """One sentence per run, built from the measured values."""
    lines = []
    for label, m in zip(labels, results):
        lines.append(
            f"- **{label}** ({m['status']}): {m['boundaries']} boundaries; the batch loss rose "
            f"to a median {fmt(m['loss bump at boundaries (median)'])}x its baseline right "
            f"after a boundary (largest {fmt(m['loss bump at boundaries (max)'])}x), against "
            f"{fmt(m['loss bump at ordinary steps (median)'])}x at ordinary steps (90th "
            f"percentile {fmt(m['loss bump at ordinary steps (90th pct)'])}x, exceeded by "
            f"{m['boundaries above the ordinary 90th pct']} boundaries); the gradient norm "
            f"{fmt(m['norm bump at boundaries (median)'])}x (largest "
            f"{fmt(m['norm bump at boundaries (max)'])}x) against "
            f"{fmt(m['norm bump at ordinary steps (median)'])}x. `diagnose` flagged "
            f"{m['diagnose: boundaries flagged']} of {m['boundaries']} boundaries "
            f"({m['diagnose: events elsewhere']} events elsewhere); the loose detector "
            f"{m['loose detector: boundaries flagged']} ({m['loose detector: events elsewhere']} "
            f"elsewhere).")
    return "\n".join(lines)


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    from minitrain.labs import pictures

    runs = sorted(RUNS.load(folder, NAME),
                  key=lambda r: (not shifts(r), r.config["data"]["schedule"] != "seeded",
                                 r.config["optimizer"]["grad_clip"] is not None))
    labels = [_label(r) for r in runs]
    results = [measure(r) for r in runs]
    keys = [k for k in results[0] if not k.startswith("_")]
    text = table(["", *labels], [[k, *(m[k] for m in results)] for k in keys])
    said = answers(labels, results)
    png = Path(folder) / "boundaries.png"
    pictures.shift_panels(runs, [m["_marks"] for m in results],
                          [m["_flagged"] for m in results], png)
    print(f"{said}\n\n{text}\n\npicture: {png}")
    loose = ", ".join(f"{k} {v:g}" for k, v in LOOSE.items())
    blocks = {"source-shifts-answers": said + f"\n\n(Loose detector: {loose}.)",
              "source-shifts": text}
    for key, block in blocks.items():
        if page:
            update_page(page, key, block)
    return {"blocks": blocks, "measured": results}
