"""Lab 1 report: rare samples in the toy next-token model, with and without the clip.

Rare steps are read from batches.jsonl (steps whose batch holds a sample involving B); every
number compares those steps with the common steps of the same run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minitrain.core.rundir import GEOMETRY, Run
from minitrain.labs.common import Runs, clip_label
from minitrain.reports.pages import fmt, table, update_page

NAME, FOLDER = "toy-rare-samples", "toy-rare-samples"
BLOCKS = ("toy-rare-samples-answers", "toy-rare-samples")
RUNS = Runs("toy-tokens", "embed-linear")

WINDOW = 50  # common steps in the baseline before a rare step


def rare_steps(run: Run) -> np.ndarray:
    return np.array([b["step"] for b in run.batches if sum(b["words"].values()) > 0], int)


def imbalance(run: Run) -> str:
    f = run.config["data"]["rare_fraction"]
    return f"{round(100 * (1 - f))}:{round(100 * f)}"


def norm_jumps(run: Run) -> np.ndarray:
    """Pre-clip norm at each rare step over the median of the WINDOW common steps before it."""
    g, rare = run.column("grad_norm_pre_clip"), rare_steps(run)
    common = np.setdiff1d(np.arange(len(g)), rare)
    out = []
    for s in rare:
        before = common[common < s][-WINDOW:]
        if len(before) >= 5:
            out.append(g[s] / np.median(g[before]))
    return np.array(out)


def steadiness(x: np.ndarray) -> tuple[float, float]:
    """(variance over the run, variance of the step-to-step change): the first counts drift
    too, the second only the jitter."""
    x = x[np.isfinite(x)]
    return float(np.var(x)), float(np.var(np.diff(x)))


def rare_classes(run: Run) -> list[str]:
    """Target classes whose examples all hold B: B itself (A -> B) and C (B -> C)."""
    counts = run.log("classes.jsonl")[0]["class_count"]
    return [c for c, n in counts.items() if n and n < max(counts.values()) / 2]


def class_accuracy(run: Run, cls: str) -> np.ndarray:
    return np.array([r["class_accuracy"][cls] for r in run.log("classes.jsonl")], float)


def geometry_at(run: Run, steps: np.ndarray, key: str, cls: str) -> np.ndarray:
    geo = run.log(GEOMETRY)
    return np.array([geo[s][key][cls] for s in steps if s < len(geo)], float)


def cos_change(run: Run) -> np.ndarray:
    """Largest |change| of any pairwise cosine between class embeddings, per step."""
    geo = run.log(GEOMETRY)
    cos = np.array([list(g["cosines"].values()) for g in geo])
    return np.abs(np.diff(cos, axis=0, prepend=cos[:1])).max(axis=1)


def measure(run: Run) -> dict:
    rare = rare_steps(run)
    common = np.setdiff1d(np.arange(len(run.metrics)), rare)
    geo = run.log(GEOMETRY)
    jumps = norm_jumps(run)
    g = run.column("grad_norm_pre_clip")
    m = {"run": run.name, "path": str(run.path), "imbalance": imbalance(run),
         "clip": clip_label(run),
         "rare steps": len(rare), "first rare step": int(rare[0]) if len(rare) else None,
         "norm at rare steps (median)": np.median(g[rare]) if len(rare) else np.nan,
         "norm at common steps (median)": np.median(g[common]),
         "jump x (median)": np.median(jumps) if len(jumps) else np.nan,
         "jump x (max)": np.max(jumps) if len(jumps) else np.nan,
         "rare steps clipped": float(np.mean(run.column("clip_factor")[rare] < 1))
         if len(rare) else np.nan,
         "final loss (whole set)": run.column("train_loss")[-1]}
    for key, x in (("weight norm", run.column("weight_norm")),
                   ("participation ratio", np.array([r["participation_ratio"] for r in geo])),
                   ("effective rank", np.array([r["effective_rank"] for r in geo]))):
        m[f"{key}: var"], m[f"{key}: var of change"] = steadiness(x)
        m[f"{key}: final"] = x[-1]
    for cls in rare_classes(run):
        acc = class_accuracy(run, cls)
        right = np.nonzero(acc == 1)[0]
        m[f"class {cls}: first step all right"] = int(right[0]) if len(right) else None
        m[f"class {cls}: share of steps all right"] = float(np.mean(acc == 1))
        m[f"class {cls}: final accuracy"] = acc[-1]
    dc = cos_change(run)
    for cls in run.summary["vocab"][:2]:  # A and B: the inputs only rare samples hold
        for key, label in (("displacement", "move"), ("angle_change_deg", "turn deg")):
            at_rare = geometry_at(run, rare, key, cls)
            at_common = geometry_at(run, common, key, cls)
            m[f"{cls} {label} at rare steps (max)"] = at_rare.max() if len(at_rare) else np.nan
            m[f"{cls} {label} at common steps (max)"] = at_common.max()
    m["largest cosine change at rare steps"] = dc[rare].max() if len(rare) else np.nan
    m["largest cosine change at common steps"] = dc[common].max()
    return m


def answers(results: list[dict]) -> str:
    """The page's four questions, answered in sentences built from the measured values."""
    by = {(r["imbalance"], r["clip"]): r for r in results}
    lines = []
    for imb in dict.fromkeys(r["imbalance"] for r in results):
        off, on = by.get((imb, "no clip")), by.get((imb, "clip 1"))
        if not (off and on):
            continue
        lines.append(f"**{imb}** ({off['rare steps']} rare-sample steps, the first at step "
                     f"{fmt(off['first rare step'])}):")
        lines.append(
            f"- Gradient norm at a rare step, over the median of the {WINDOW} common steps "
            f"before it: median {fmt(off['jump x (median)'])}x (largest "
            f"{fmt(off['jump x (max)'])}x) without the clip, {fmt(on['jump x (median)'])}x "
            f"(largest {fmt(on['jump x (max)'])}x) with it; the clip cut "
            f"{fmt(100 * on['rare steps clipped'])}% of the rare steps.")
        for key in ("weight norm", "participation ratio", "effective rank"):
            lines.append(
                f"- {key.capitalize()}: variance over the run {fmt(off[key + ': var'])} without, "
                f"{fmt(on[key + ': var'])} with the clip; variance of its step-to-step change "
                f"{fmt(off[key + ': var of change'])} without, "
                f"{fmt(on[key + ': var of change'])} with.")
        for cls in ("B", "C"):
            k = f"class {cls}: first step all right"
            if k in off:
                lines.append(
                    f"- Rare target class {cls}: all its examples right from step {fmt(off[k])} "
                    f"without, {fmt(on[k])} with the clip; right at "
                    f"{fmt(100 * off[f'class {cls}: share of steps all right'])}% / "
                    f"{fmt(100 * on[f'class {cls}: share of steps all right'])}% of steps; "
                    f"final accuracy {fmt(off[f'class {cls}: final accuracy'])} / "
                    f"{fmt(on[f'class {cls}: final accuracy'])}.")
        for cls in ("A", "B"):
            lines.append(
                f"- Embedding of {cls} (an input only rare samples hold): largest move at a rare "
                f"step {fmt(off[f'{cls} move at rare steps (max)'])} without, "
                f"{fmt(on[f'{cls} move at rare steps (max)'])} with the clip (at common steps "
                f"{fmt(off[f'{cls} move at common steps (max)'])} / "
                f"{fmt(on[f'{cls} move at common steps (max)'])}); largest turn "
                f"{fmt(off[f'{cls} turn deg at rare steps (max)'])} / "
                f"{fmt(on[f'{cls} turn deg at rare steps (max)'])} degrees.")
        lines.append(
            f"- Largest change of a pairwise cosine at a rare step "
            f"{fmt(off['largest cosine change at rare steps'])} without, "
            f"{fmt(on['largest cosine change at rare steps'])} with the clip (at common steps "
            f"{fmt(off['largest cosine change at common steps'])} / "
            f"{fmt(on['largest cosine change at common steps'])}).")
        lines.append("")
    return "\n".join(lines).strip()


def _order(run: Run):
    return run.config["data"]["rare_fraction"], run.config["optimizer"]["grad_clip"] is not None


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    from minitrain.labs import pictures

    runs = sorted(RUNS.load(folder, NAME), key=_order)
    results = [measure(r) for r in runs]
    hidden = ("run", "path", "imbalance", "clip")
    keys = list(dict.fromkeys(k for r in results for k in r if k not in hidden))
    text = table(["", *(f"{r['imbalance']} {r['clip']}" for r in results)],
                 [[k, *(r.get(k) for r in results)] for k in keys])
    for run in runs:
        pictures.toy_panels(run, rare_steps(run), Path(folder) / f"panels-{run.name}.png")
    for name in dict.fromkeys(imbalance(r) for r in runs):
        pair = [r for r in runs if imbalance(r) == name]
        tag = name.replace(":", "-")
        pictures.toy_side_by_side(pair, [rare_steps(r) for r in pair],
                                  Path(folder) / f"compare-{tag}.png")
        pictures.toy_trajectories(pair, [rare_steps(r) for r in pair],
                                  Path(folder) / f"trajectories-{tag}.png")
    said = answers(results)
    print(said + "\n\n" + text)
    if page:
        update_page(page, "toy-rare-samples-answers", said)
        update_page(page, "toy-rare-samples", text)
        print(f"measured blocks updated in {page}")
    return {"blocks": {"toy-rare-samples-answers": said, "toy-rare-samples": text},
            "measured": results}
