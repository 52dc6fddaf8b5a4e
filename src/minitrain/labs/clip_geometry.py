"""The clip-geometry lab: what each clip mode does to real phase-19 gradients.

Reads a run directory whose checkpoint holds Run B just before the rare batch arrives (the
run stopped at `data.arrive_step`), rebuilds that batch from the checkpoint's sampler, and
for the rare batch and the ten ordinary batches before it compares the three clip modes of
`optim.clip_grads` at the same budget (each mode's threshold chosen so that the clipped
global norm is `budget`): the cosine to the raw gradient, each tensor's share of the squared
norm, and the size of each tensor's AdamW update when that clipped gradient is applied.

minitrain report clip-geometry RUN [--page README.md]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minitrain.core import optim
from minitrain.core.restore import Restored, restore
from minitrain.labs.common import Runs
from minitrain.reports.pages import fmt, update_page

NAME, FOLDER, BLOCKS = "clip-geometry", "clip-geometry", ("clip-geometry",)
RUNS = Runs("corpus", "gpt", one=True, arrival=False)  # one run, stopped at its arrival
MODES = ("global", "per-tensor", "value")
BUDGET = 1.0  # the global norm every mode clips to ...
FRACTION = 0.25  # ... or this share of the raw norm: ordinary gradients sit below the budget


def _threshold_for(grads, mode: str, budget: float) -> float:
    """The threshold at which `mode` leaves a global norm of `budget` (bisection; the clipped
    norm grows with the threshold)."""
    if mode == "global":
        return budget
    lo, hi = 0.0, max(float(g.abs().max()) if mode == "value" else float(g.norm())
                      for g in grads)
    for _ in range(60):
        mid = (lo + hi) / 2
        if optim.clip_grads(grads, mid, mode).post_norm < budget:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.flatten() for t in ts])


def measure(path: Path, budget: float = 1.0, fraction: float = 0.25) -> dict:
    """Each gradient clipped to a global norm of `budget`, and (second table) of `fraction`
    times its own raw norm, so that ordinary gradients, far below the budget, are clipped
    too."""
    lab = restore(path)
    rare_ids = lab.sampler.next_ids()  # the batch the run would take next
    past = lab.run.batches[max(0, lab.step - 10):lab.step]
    out = {"step": lab.step, "budget": budget, "fraction": fraction, "names": lab.names,
           "rare_ids": rare_ids, "batches": {}}
    ordinary = [lab.grads(b.get("windows", b["sentence_ids"])) for b in past]  # packed: rows
    out["batches"]["rare batch", "budget"] = [
        _clip_all(lab, lab.grads(rare_ids), "budget", budget, fraction)]
    for scale in ("budget", "fraction"):  # ordinary gradients sit far below the budget
        out["batches"]["ordinary batches", scale] = [
            _clip_all(lab, raw, scale, budget, fraction) for raw in ordinary]
    return out


def _clip_all(lab: Restored, raw: list[torch.Tensor], scale: str, budget: float,
              fraction: float) -> dict:
    flat = _flat(raw)
    target = budget if scale == "budget" else fraction * float(flat.norm())
    row = {"norm": float(flat.norm()), "target": target, "share_raw": _shares(raw),
           "update_raw": lab.update_norms(raw)}
    for mode in MODES:
        th = _threshold_for(raw, mode, target)
        res = optim.clip_grads(raw, th, mode)
        row[mode] = {"threshold": th, "post_norm": res.post_norm,
                     "cosine": float(torch.nn.functional.cosine_similarity(
                         _flat(res.grads), flat, dim=0)),
                     "share": _shares(res.grads), "update": lab.update_norms(res.grads)}
    return row


def _shares(ts) -> np.ndarray:
    sq = np.array([float((t * t).sum()) for t in ts])
    return sq / sq.sum()


def tables(m: dict) -> str:
    """The lab page's measured block."""
    lines = [f"Model restored after step {m['step']}. Each mode's threshold is set so that the "
             f"clipped global norm is the target: {m['budget']}, or {m['fraction']} x the raw "
             "norm. Ordinary: mean over the 10 batches before.", "",
             "| gradient | raw norm | target | mode | threshold | cosine to raw |",
             "|---|---:|---:|---|---:|---:|"]
    for (label, _), rows in m["batches"].items():
        norm, target = np.mean([r["norm"] for r in rows]), np.mean([r["target"] for r in rows])
        for mode in MODES:
            th = fmt(np.mean([r[mode]["threshold"] for r in rows]), ".4g")
            cos = fmt(np.mean([r[mode]["cosine"] for r in rows]), ".4f")
            lines.append(f"| {label} | {fmt(norm, '.3f')} | {fmt(target, '.3f')} | {mode} | "
                         f"{th if target < norm else 'none acts'} | {cos} |")
    r = m["batches"]["rare batch", "budget"][0]
    order = np.argsort(-r["share_raw"])[:6]
    lines += ["", "Rare batch, the six tensors with the largest share of the squared norm: "
              f"share of the squared gradient norm, and the AdamW update norm it makes "
              f"(x 1e-3), raw and after each clip to {m['budget']}:", "",
              "| tensor | share raw | share per-tensor | share value | update raw | "
              "update global | update per-tensor | update value |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i in order:
        shares = [fmt(x[i], ".1%") for x in (r["share_raw"], r["per-tensor"]["share"],
                                               r["value"]["share"])]
        updates = [fmt(1e3 * x[i], ".3f") for x in (r["update_raw"], r["global"]["update"],
                                                    r["per-tensor"]["update"],
                                                    r["value"]["update"])]
        lines.append(f"| {m['names'][i]} | " + " | ".join(shares + updates) + " |")
    return "\n".join(lines) + "\n"


def picture(png: Path, budget: float = 1.0) -> None:
    """Two 2-D tensors, A = (3, 1) and B = (0.3, 0.6), one gradient of global norm 3.2:
    before (faded) and after each clip at the same budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = [torch.tensor([3.0, 1.0]), torch.tensor([0.3, 0.6])]
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.6))
    for panel, mode in zip(ax, MODES):
        th = _threshold_for(raw, mode, budget)
        res = optim.clip_grads(raw, th, mode)
        cos = float(torch.nn.functional.cosine_similarity(_flat(res.grads), _flat(raw), dim=0))
        for t, c, name in zip(range(2), ("tab:blue", "tab:orange"), ("A", "B")):
            r, g = raw[t].numpy(), res.grads[t].numpy()
            panel.annotate("", r, (0, 0), arrowprops=dict(arrowstyle="->", color=c, alpha=0.3))
            panel.annotate("", g, (0, 0), arrowprops=dict(arrowstyle="->", color=c, lw=2))
            panel.text(3.25, 0.02 + 0.13 * (1 - t), f"{name} ({r[0]:.2f}, {r[1]:.2f}) -> "
                       f"({g[0]:.2f}, {g[1]:.2f})", color=c, fontsize=9, ha="right")
        if mode == "global":
            panel.add_patch(plt.Circle((0, 0), budget, fill=False, ls=":", color="0.5"))
        elif mode == "per-tensor":  # each tensor's own ball
            panel.add_patch(plt.Circle((0, 0), th, fill=False, ls=":", color="0.5"))
        else:
            panel.add_patch(plt.Rectangle((-th, -th), 2 * th, 2 * th, fill=False, ls=":",
                                          color="0.5"))
        panel.set_title(f"{mode}: threshold {th:.3f}, cosine to raw {cos:.3f}")
        panel.set_xlim(-0.2, 3.3)
        panel.set_ylim(-0.1, 1.3)
        panel.set_aspect("equal")
        panel.grid(alpha=0.3)
    fig.suptitle(f"one gradient, two tensors A and B (faded: raw), clipped to global norm "
                 f"{budget}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def report(folder: str | Path, page: str | Path | None = None) -> dict:
    """Measure the run in `folder`, draw `clip-geometry.png` into it, fill the page's block;
    print the tables."""
    (run,) = RUNS.load(folder, NAME)
    m = measure(run.path, BUDGET, FRACTION)
    text = tables(m)
    picture(run.path / "clip-geometry.png", BUDGET)
    if page:
        update_page(page, "clip-geometry", text)
    print(text)
    return {"blocks": {"clip-geometry": text}, "measured": m}
