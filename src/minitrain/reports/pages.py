"""Writing measurements into pages: the one number formatter, Markdown tables, and the
`<!-- measured:NAME -->` blocks a report refills. Nothing here measures."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from minitrain.core.rundir import RunDirError


def fmt(x, spec: str = ".3g", missing: str = "n/a", nonfinite: str | None = None,
        tiny: str | None = None) -> str:
    """One value as a page shows it. None reads `missing`; a float is formatted with `spec`
    (with `tiny`, one under 0.01 in size with that spec instead); nan reads `missing` and inf
    'inf', unless `nonfinite` gives one text for both; a bool is yes/no; anything else its str.
    The options exist because the pages already in the tree print a missing value in their
    own ways ("never", "n/a", "–"), and their bytes must not change."""
    if x is None:
        return missing
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not isinstance(x, (float, np.floating)):
        return str(x)
    if not np.isfinite(x):
        if nonfinite is not None:
            return nonfinite
        return "inf" if np.isinf(x) else missing
    if tiny is not None and x != 0 and abs(x) < 0.01:
        return format(x, tiny)
    return format(x, spec)


def table(header: list, rows: list[list], **how) -> str:
    """A Markdown table; every cell through `fmt` (with `how`), a `|` inside a cell escaped."""
    def cell(v) -> str:
        return fmt(v, **how).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_page(page: str | Path, key: str, text: str) -> None:
    """Replace the block between `<!-- measured:KEY -->` and `<!-- /measured:KEY -->`."""
    page = Path(page)
    try:
        src = page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{page}: cannot read the page: {e}") from None
    start, end = f"<!-- measured:{key} -->", f"<!-- /measured:{key} -->"
    if start not in src or end not in src:
        raise RunDirError(f"{page}: no '{start}' ... '{end}' block to fill")
    head, rest = src.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{text}\n{end}{tail}", encoding="utf-8")


def _block_texts(src: str) -> dict[str, str]:
    """Each measured block of a page's text (opened and closed): name -> what it holds."""
    import re

    return {k: src.split(f"<!-- measured:{k} -->", 1)[1].split(f"<!-- /measured:{k} -->")[0]
            for k in re.findall(r"<!-- measured:([^ ]+) -->", src)
            if f"<!-- /measured:{k} -->" in src}


def blocks(page: str | Path) -> set[str]:
    """The names of the measured blocks a page holds (opened and closed)."""
    return set(_block_texts(Path(page).read_text(encoding="utf-8")))


def block_text(page: str | Path, key: str) -> str:
    """What a page's `<!-- measured:KEY -->` block holds now."""
    return _block_texts(Path(page).read_text(encoding="utf-8"))[key]


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The first Markdown table in `text`, read back: first cell -> {header: cell}."""
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return rows


# ---- where a page's numbers were made ------------------------------------------------------

MADE_ON = "made-on"  # the block saying where the blocks a recipe fills were measured
OTHER_MACHINE = 0.25  # how far a number may move on a CPU with other vector instructions:
# the exercise pages' blocks, made with AVX512 kernels and rerun with AVX2 ones, moved up to 19%
OTHER_MACHINE_ABS = 0.05  # and near zero, where a relative move says nothing: a control run's
# whole-set rise is -0.053 on AVX2 and -0.033 on AVX512, "no rise" on both (a rise is > 0.1)


def commit(root: Path) -> str:
    """The commit the page was made at ('+' when the tree had changes), or 'unknown'."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", ":/src"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def machine() -> str:
    """What a run's bits depend on beyond its config: torch's build and the CPU kernels it
    picked (the same run trains to other bits with other vector instructions)."""
    import torch

    return f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"


def made_on(page: str | Path) -> str | None:
    """The machine a page's `made-on` block names, or None."""
    if MADE_ON not in blocks(page):
        return None
    text = " ".join(block_text(page, MADE_ON).split())
    return text.split("made on ", 1)[1].split(" at commit")[0] if " at commit" in text else None


def tolerance(page: str | Path, same: float = 0.02) -> float:
    """The relative tolerance a test holds a page's numbers to against fresh runs: `same` on
    the machine the page names, OTHER_MACHINE elsewhere."""
    return same if _here(page) else OTHER_MACHINE


def floor(page: str | Path) -> float:
    """The absolute tolerance beside `tolerance`: for numbers near zero."""
    return 1e-3 if _here(page) else OTHER_MACHINE_ABS


def _here(page: str | Path) -> bool:
    """Whether this machine is the one the page's blocks were made on."""
    return made_on(page) == machine()


def stamp(page: str | Path, command: str, root: Path = Path("."),
          held_by: str = "the tests hold") -> str:
    import textwrap

    text = textwrap.fill(
        f"The measured blocks `{command}` fills were made on {machine()} at commit "
        f"{commit(root)}. On a CPU with other vector instructions the same runs train to other "
        f"bits: {held_by} these blocks to 2% of fresh runs on the machine named here, and "
        f"to {OTHER_MACHINE:.0%} (or {OTHER_MACHINE_ABS} for numbers near zero) on others.", 95)
    update_page(page, MADE_ON, text)
    return text


# ---- a page against a rerun of its recipe -------------------------------------------------

NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"


def differences(before: str, after: str, rel: float, atol: float = 1e-3) -> list[str]:
    """Where the measured blocks of two versions of a page's text disagree: a block one of
    them lacks, other words (numbers masked), or a number further apart than `rel` of the
    larger (and `atol`). The made-on block and the lines naming a commit are left out."""
    import re

    old, new = _block_texts(before), _block_texts(after)
    out = [f"block {k}: only in {'the first' if k in old else 'the second'}"
           for k in sorted(set(old) ^ set(new)) if k != MADE_ON]
    for key in sorted(set(old) & set(new) - {MADE_ON}):
        a, b = ([ln for ln in t[key].splitlines() if " at commit " not in ln]
                for t in (old, new))
        for i, (la, lb) in enumerate(zip(a, b)):
            if re.sub(NUMBER, "#", la) != re.sub(NUMBER, "#", lb):
                out.append(f"block {key}, line {i + 1}: other words:\n  {la}\n  {lb}")
                continue
            for x, y in zip(map(float, re.findall(NUMBER, la)), map(float, re.findall(NUMBER, lb))):
                if abs(x - y) > max(atol, rel * max(abs(x), abs(y))):
                    out.append(f"block {key}, line {i + 1}: {x:g} became {y:g}")
        if len(a) != len(b):
            out.append(f"block {key}: {len(a)} lines became {len(b)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitrain.reports.pages",
                                description="fill the pages' made-on block, or check a page "
                                "against its saved copy")
    p.add_argument("--command", help="stamp: the recipe that filled the blocks")
    p.add_argument("--held-by", default="the tests hold",
                   help="stamp: what checks the blocks (default: 'the tests hold')")
    p.add_argument("--check", metavar="SAVED", help="hold the page's blocks to SAVED's (a copy "
                   "from before the rerun): 2%% on the machine SAVED names, else "
                   + f"{OTHER_MACHINE:.0%}".replace("%", "%%"))
    p.add_argument("pages", nargs="+")
    args = p.parse_args(argv)
    if (args.command is None) == (args.check is None):
        p.error("give one of --command and --check")
    if args.check and len(args.pages) != 1:
        p.error("--check SAVED holds one page to it")
    try:
        if args.command:
            for page in args.pages:
                stamp(page, args.command, held_by=args.held_by)
            return 0
        page, saved, rel = args.pages[0], Path(args.check), tolerance(args.check)
        texts = [f.read_text(encoding="utf-8") for f in (saved, Path(page))]
        found = differences(*texts, rel=rel, atol=floor(args.check))
        n = len(set(_block_texts(texts[0])) - {MADE_ON})
        print(f"{page}: {n} blocks, " + (f"{len(found)} differences beyond {rel:.0%}"
                                         if found else f"all within {rel:.0%}"))
        for d in found[:20]:
            print(f"  {d}")
        return 1 if found else 0
    except (RunDirError, OSError, UnicodeDecodeError) as e:
        print(f"pages: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
