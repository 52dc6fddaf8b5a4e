"""Side-by-side report of two run directories at their spike step (measure.spike_step): a
terminal summary, one PNG of panels, and the table for a page's `A-vs-B` block."""

from __future__ import annotations

import math
from pathlib import Path

from minitrain.core.rundir import Run, RunDirError, load_run
from minitrain.reports.measure import (
    MIN_RISE,
    WINDOW,
    sentence_texts,
    spike_step,
    summarise,
    top_tokens,
)
from minitrain.reports.pages import fmt, update_page


def markdown(result: dict) -> str:
    """The summary table as Markdown, for pages whose numbers must come from the runs."""
    sa, sb = result["a_summary"], result["b_summary"]
    lines = [f"Spike step: {_cell(result['spike_step'])}", "",
             f"| | {result['a']} | {result['b']} |", "|---|---:|---:|"]
    for key in dict.fromkeys([*sa, *sb]):
        lines.append(f"| {key} | {_cell(sa.get(key, 'n/a'))} | {_cell(sb.get(key, 'n/a'))} |")
    said = [r for r in (split_reading(result["a"], sa), split_reading(result["b"], sb)) if r]
    if said:
        lines += ["", "The whole-set rise, split (these lines are generated from the rows "
                  "above):", *(f"- {r}" for r in said)]
    return "\n".join(lines)


def split_reading(name: str, s: dict) -> str | None:
    """In words, the whole-set rise and its two parts: the common sentences (a rise there is
    forgetting) and the rare ones (a fall there is learning them); None without the split.
    Each part is its own worst-after minus before, so the parts need not add up to the whole."""
    w, c, r = (s.get(k) for k in ("whole_rise", "whole_rise, common sentences",
                                  "whole_rise, rare sentences"))
    if not all(isinstance(x, float) and math.isfinite(x) for x in (w, c, r)):
        return None

    def part(x, what, up, down):
        if x > MIN_RISE:
            return f"its {what} rise ({x:+.3g}{up})"
        if x < -MIN_RISE:
            return f"its {what} fall ({x:+.3g}{down})"
        return f"its {what} hold ({x:+.3g})"

    common = part(c, "common sentences", ": forgotten", "")
    rare = part(r, "rare ones", "", ": learned")
    if w > MIN_RISE:
        return f"{name}: whole-set rise {w:+.3g}; {common}, {rare}."
    if c > MIN_RISE:
        return f"{name}: no whole-set rise above {MIN_RISE:g} ({w:+.3g}), yet {common}; {rare}."
    return f"{name}: no whole-set rise above {MIN_RISE:g} ({w:+.3g}); {common}, {rare}."


def kind(run: Run) -> str:
    """What a run is, as far as comparing goes: its model and the kind of its data (a corpus
    and a mixture are both text)."""
    data = run.config.get("data", {}).get("kind", "corpus")
    data = "text" if data in ("corpus", "mixture") else data
    return f"model {run.config.get('model', {}).get('kind', 'gpt')}, data {data}"


def report(a_path, b_path, out: str | Path | None = None, page: str | Path | None = None) -> dict:
    a, b = load_run(a_path), load_run(b_path)
    if kind(a) != kind(b):  # their steps, batches and norms measure different things
        raise RunDirError(f"compare: {a.path} ({kind(a)}) and {b.path} ({kind(b)}) are runs of "
                          "different kinds; compare reads two runs of one kind")
    step = spike_step(a, b)
    result = {"spike_step": step, "a": a.name, "b": b.name}
    if step is None:
        result["a_summary"], result["b_summary"] = summarise(a, 0), summarise(b, 0)
    else:
        result["a_summary"], result["b_summary"] = summarise(a, step), summarise(b, step)
    _print(a, b, step, result)
    out_dir = Path(out) if out else b.path
    png = out_dir / f"compare-{a.name}-vs-{b.name}.png"
    from minitrain.reports.plots import compare_panels

    compare_panels(a, b, step, png)
    result["png"] = str(png)
    print(f"\npicture: {png}")
    if page:
        update_page(page, f"{a.name}-vs-{b.name}", markdown(result))
        print(f"measured block updated in {page}")
    return result


def _cell(x) -> str:
    return fmt(x, ".4g", missing="never", nonfinite="nan")


def _print(a: Run, b: Run, step, result) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    title = f"spike step {step} (largest pre-clip norm / median of the {WINDOW} steps before)"
    table = Table(title=title if step is not None else "no step after warm-up to compare")
    table.add_column("")
    table.add_column(a.name, justify="right")
    table.add_column(b.name, justify="right")
    sa, sb = result["a_summary"], result["b_summary"]
    keys = list(dict.fromkeys([*sa, *sb]))
    for key in keys:
        table.add_row(key, _cell(sa.get(key, "n/a")), _cell(sb.get(key, "n/a")))
    con.print(table)
    if step is None or step >= len(b.batches):
        return
    batch = b.batches[step]
    con.print(f"\n[bold]batch at step {step}[/] (tracked words: {batch.get('words')}, "
              f"pieces: {batch.get('pieces')})")
    for sid, text in sentence_texts(b, step):
        con.print(f"  [{sid:>4}] {text}")
    for run in (a, b):
        con.print(f"\n[bold]top target pieces by summed loss at step {step}, {run.name}[/]")
        for piece, total, n in top_tokens(run, step):
            con.print(f"  {piece!r:>14}  {total:8.3f} nats over {n}")
