"""The measured blocks of a catalogue exercise's page (experiments/NAME/README.md), filled by
`minitrain exercise run NAME` from its runs: the signs of each run side by side (`runs`),
what diagnose names and why (`cause`), text from each checkpoint (`samples`); and the
catalogue page's table of blind rounds (`rounds`, experiments/break-it/README.md)."""

from __future__ import annotations

from pathlib import Path

from minitrain.exercises import catalogue, causes, quiz
from minitrain.exercises.causes import diagnose
from minitrain.reports import pages, text
from minitrain.reports.pages import fmt, table

BLOCKS = ("runs", "cause", "samples", "quiz")
N_SAMPLES = 20  # drawn per run for the shares; the page prints the first few
SHOWN = 3


def _stamp(root: Path, command: str) -> str:
    return f"Made by `{command}` at commit {pages.commit(root)}, seed and config as in each " \
           "run's `config.resolved.yaml`."


def runs_block(results: dict[str, dict], paths: dict[str, Path]) -> str:
    header = ["", *results]
    rows = []

    def row(label, key, spec=".3g"):
        rows.append([label, *(fmt(r["symptoms"][key], spec) for r in results.values())])

    rows.append(["run directory", *(f"`{p.name}`" for p in paths.values())])
    row("step-0 batch loss (ln V: uniform guess)", "loss_0", ".3f")
    row("ln V", "ln_vocab", ".3f")
    row("whole-set train loss at the end", "whole_final", ".3g")
    row("lowest whole-set train loss", "whole_min", ".3g")
    row("corpus floor for a causal model", "floor", ".4f")
    row("validation loss at the end", "val_final", ".3g")
    row("lr at step 0", "lr_0", ".3g")
    row("peak lr", "lr_peak", ".3g")
    rows.append(["lr under 1% of peak from step",
                 *(fmt(r["symptoms"]["lr_zero_from"], missing="never") for r in results.values())])
    row("largest single-weight change at step 0", "update_max_0", ".3g")
    row("median pre-clip gradient norm", "grad_norm_median", ".3g")
    row("median update norm over the last third", "update_norm_late", ".3g")
    rows.append(["steps clipped", *(f"{r['symptoms']['clipped_share']:.0%}"
                                    for r in results.values())])
    row("weight norm at step 0", "weight_norm_0", ".4g")
    row("weight norm at the end", "weight_norm_final", ".4g")
    return table(header, rows)


def reading(results: dict[str, dict]) -> str:
    """The table's last word, from its numbers: where each run's whole-set loss ends against
    the control's."""
    base = results["control"]["symptoms"]["whole_final"]
    parts = []
    for role, r in results.items():
        end = r["symptoms"]["whole_final"]
        if role != "control" and base and end is not None:
            parts.append(f"the {role} ends at {end / base:.3g}x the control's whole-set loss "
                         f"({end:.3g} vs {base:.3g})")
    return ("Read: " + "; ".join(parts) + ".") if parts else ""


def cause_block(results: dict[str, dict]) -> str:
    lines = []
    for role, r in results.items():
        lines.append(f"- **{role}**: `{r['cause']['name']}`")
        lines += [f"  - {e}" for e in r["cause"]["evidence"]]
    return "\n".join(lines)


def samples_block(paths: dict[str, Path]) -> str:
    lines = []
    for role, path in paths.items():
        s = text.sample(path, n=N_SAMPLES, seed=0)
        share = s["training_share"]
        lines.append(f"**{role}** (checkpoint at step {s['checkpoint_step']}, temperature "
                     f"{s['temperature']:g}, seed 0): of {N_SAMPLES} samples "
                     f"{s['eos_share']:.0%} end with EOS and {fmt(share, '.0%')} are training "
                     "sentences word for word. The first few:")
        lines.append("")
        lines += [f"- {_quoted(x['text'])}" for x in s["samples"][:SHOWN]]
        lines.append("")
    return "\n".join(lines).rstrip()


def _quoted(t: str) -> str:
    t = t.strip() or "(nothing)"
    return "`" + t.replace("`", "'")[:120] + "`"


def report(root: Path, name: str, page: Path | None = None) -> dict:
    """Fill the exercise's page from its runs; returns {"blocks": {...}, "page": path}."""
    paths = catalogue.run_dirs(root, name)
    results = {role: diagnose(path) for role, path in paths.items()}
    stamp = _stamp(root, f"minitrain exercise run {name}")
    blocks = {"runs": f"{stamp}\n\n{runs_block(results, paths)}\n\n{reading(results)}",
              "cause": cause_block(results), "samples": samples_block(paths),
              "quiz": quiz.block(name)}
    page = page or catalogue.folder(root, name) / "README.md"
    for key, body in blocks.items():
        pages.update_page(page, key, body)
    return {"blocks": blocks, "page": page,
            "measured": {role: r["symptoms"] for role, r in results.items()}}


def rounds_block(root: Path, rounds: list[Path]) -> str:
    """For every blind round: the cause diagnose names in each folder, against the truth."""
    from minitrain.tools.exercise import REFERENCE, sealed

    names = [*catalogue.BREAKS, "reference"]
    cells = {n: [] for n in names}
    signs = {n: [] for n in names}
    answers = [sealed(out) for out in rounds]
    for out, answer in zip(rounds, answers):
        for label, truth in {**answer["mapping"], REFERENCE: "healthy"}.items():
            d = diagnose(out / label)
            got = d["cause"]["name"]
            key = "reference" if label == REFERENCE else truth
            cells[key].append((answer["seed"], got, got == truth))
            signs[key].append(causes.margins(d["symptoms"]))
    header = ["run", "truth", *(f"seed {s}" for s, _, _ in cells["reference"]), "named right"]
    rows = []
    for n in names:
        truth = "healthy" if n == "reference" else n
        rows.append([n, f"`{truth}`", *(f"`{g}`" for _, g, _ in cells[n]),
                     f"{sum(ok for _, _, ok in cells[n])}/{len(cells[n])}"])
    steps = ", ".join(fmt(s, missing="each exercise's own")
                      for s in {answer["steps"] for answer in answers})
    total = sum(ok for c in cells.values() for _, _, ok in c)
    n = sum(len(c) for c in cells.values())
    keys = list(causes.margins(None))
    margin_rows = [[n, *(_span([x[k] for x in signs[n]]) for k in keys)] for n in names]
    return (f"{_stamp(root, 'just break-it-rounds')} Steps per run: "
            f"{steps}."
            f"\n\n{table(header, rows)}\n\ndiagnose named {total} of {n} runs right.\n\n"
            "The signs its rules read (lowest and highest over the rounds), each with the "
            f"threshold its rule uses (`exercises/causes.py`):\n\n"
            f"{table(['run', *(f'{k} ({causes.LIMITS[k]})' for k in keys)], margin_rows)}")


def _span(values: list) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "–"
    lo, hi = min(xs), max(xs)
    return fmt(lo, ".3g") if fmt(lo, ".3g") == fmt(hi, ".3g") else \
        f"{fmt(lo, '.3g')}–{fmt(hi, '.3g')}"
