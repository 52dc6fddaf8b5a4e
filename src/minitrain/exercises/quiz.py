"""Check-yourself questions of the catalogue's pages. Every numeric answer is computed by the
project's own code (the optimizer, the schedule, the floor, the clip) when asked, never typed;
the page's `quiz` block is this module's output, and `minitrain exercise quiz NAME` asks the
same questions in the terminal and checks an answer to the stated tolerance."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from minitrain.core import guards, optim
from minitrain.core.config import OptimizerConfig
from minitrain.reports.measure import suggest_clip
from minitrain.reports.text import memorisation_floor


@dataclass(frozen=True)
class Question:
    ask: str
    answer: Callable[[], float]
    worked: Callable[[float], str]  # the worked answer, given the computed value
    tol: float = 0.02  # relative


def adam_first_step(lr: float, g: float, betas=(0.9, 0.998)) -> float:
    """How far one weight moves on Adam's first step, by the project's AdamW."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = optim.AdamW([{"params": [w], "weight_decay": 0.0}], lr=lr, betas=betas)
    w.grad = torch.full((1,), g)
    opt.step()
    return abs(float(w.detach()[0]))


def clip_factor(norm: float, threshold: float) -> float:
    """The global clip's scale, by the project's own rule (core/guards.py, as loop.py writes)."""
    return guards.global_factor(threshold, norm)


def m_after_spike(spike: float, quiet: int, b1: float = 0.9) -> float:
    """|m| of one weight `quiet` zero-gradient steps after a gradient `spike` from m = 0, by
    the project's AdamW (its moment, not a formula)."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = optim.AdamW([{"params": [w], "weight_decay": 0.0}], lr=1e-3, betas=(b1, 0.999))
    for g in [spike] + [0.0] * quiet:
        w.grad = torch.full((1,), g)
        opt.step()
    return abs(float(opt.m[0][0]))


def _suggested(norms: list[float]) -> float:
    run = SimpleNamespace(column=lambda key: np.array(norms))  # a run's pre-clip norms only
    return suggest_clip(run)


def _floor_two() -> float:
    # ids: 5 "The", 6 "cat", 7 "dog", 2 EOS; the two sentences share only their first piece
    return memorisation_floor({0: (5, 6, 2), 1: (5, 7, 2)})


QUIZZES: dict[str, list[Question]] = {
    "bad-init": [
        Question("A model that guesses each of V = 400 pieces with probability 1/V: what is its "
                 "loss per piece, in nats?", lambda: math.log(400),
                 lambda a: f"-ln(1/400) = ln 400 = {a:.3f}: where a fresh, well-initialised "
                 "model starts, and the number step 0 is held against."),
        Question("At std 2.0 the logits are far from 0. If the softmax puts 0.999 on one wrong "
                 "piece and spreads the rest evenly over the other 399, what is the loss on "
                 "the right piece, in nats?", lambda: -math.log(0.001 / 399),
                 lambda a: f"-ln(0.001 / 399) = {a:.2f}: a confident wrong guess costs many "
                 "times ln V.", tol=0.01),
    ],
    "no-warmup": [
        Question("Adam's very first step, lr 0.03, betas (0.9, 0.998), on a weight whose "
                 "gradient is 0.001: how far does the weight move?",
                 lambda: adam_first_step(0.03, 1e-3),
                 lambda a: f"{a:.4g}, about the lr: on step 1 the bias-corrected m / sqrt(v) "
                 "is g / |g| = 1, whatever the gradient's size (computed by core/optim.py's "
                 "AdamW)."),
        Question("With a 50-step linear warm-up to 0.03, what is the lr at step 0?",
                 lambda: optim.lr_at(0, 0.03, 50, 1300, 1.0),
                 lambda a: f"0.03 x 1/50 = {a:.3g} (core/optim.py, lr_at): the first step "
                 "is 50 times smaller than without the warm-up."),
    ],
    "causal-leak": [
        Question("Two training sentences, `The cat [EOS]` and `The dog [EOS]`, one piece per "
                 "word. What is the lowest mean loss per piece a causal model can have on "
                 "them (the memorisation floor), in nats?", _floor_two,
                 lambda a: f"only the piece after `The` is uncertain (cat or dog: ln 2 each "
                 f"time), 2 ln 2 over 6 pieces = {a:.4f} (reports/text.py, "
                 "memorisation_floor)."),
        Question("A leaking model copies the next piece with probability 0.999. What is its "
                 "loss per piece, in nats?", lambda: -math.log(0.999),
                 lambda a: f"-ln 0.999 = {a:.2g}: far below any corpus' floor, held-out text "
                 "included.", tol=0.05),
    ],
    "lr-too-high": [
        Question("Whatever the gradients, how far can one weight move at update 1000 under "
                 "Adam with lr 0.06 and betas (0.9, 0.998)?",
                 lambda: optim.update_bound(OptimizerConfig(lr=0.06, betas=[0.9, 0.998]),
                                            1000, 0.06),
                 lambda a: f"{a:.3g} (core/optim.py, update_bound, by Cauchy-Schwarz on m "
                 "and v): a multiple of the lr, and ten times the control's at 10x the lr."),
        Question("And at lr 0.006, the control's?",
                 lambda: optim.update_bound(OptimizerConfig(lr=0.006, betas=[0.9, 0.998]),
                                            1000, 0.006),
                 lambda a: f"{a:.3g}: the bound scales with the lr, not with the gradient."),
    ],
    "lr-schedule": [
        Question("Peak 0.006, warm-up 50 steps, a cosine to 0 that ends at step 130: what is "
                 "the lr at step 100?", lambda: optim.lr_at(100, 0.006, 50, 130, 0.0),
                 lambda a: f"0.006 x (1 + cos(pi (100 - 50) / 80)) / 2 = {a:.3g} "
                 "(core/optim.py, lr_at)."),
        Question("The same schedule at step 500?", lambda: optim.lr_at(500, 0.006, 50, 130, 0.0),
                 lambda a: f"{a:.3g}: past step 130 the cosine is at its floor, 0, and every "
                 "update is lr x (Adam's direction) = 0.", tol=0.0),
    ],
    "phase-19": [
        Question("Run A's clip is 1.0. A spike's pre-clip norm is 4.0: by what factor is that "
                 "step's gradient scaled?",
                 lambda: clip_factor(4.0, 1.0),
                 lambda a: f"min(1, 1.0 / 4.0) = {a:g} (core/guards.py, the rule loop.py "
                 "writes out): the moments see a quarter of the spike."),
        Question("The same spike under a clip of 3.0?", lambda: clip_factor(4.0, 3.0),
                 lambda a: f"min(1, 3.0 / 4.0) = {a:g}: three quarters of the spike gets "
                 "through, which is why a clip far above the ordinary norm contains little."),
        Question("Whatever the gradients, how far can one weight move at update 1200 with "
                 "Run B's lr 0.006 and betas (0.9, 0.998)?",
                 lambda: optim.update_bound(OptimizerConfig(lr=0.006, betas=[0.9, 0.998]),
                                            1200, 0.006),
                 lambda a: f"{a:.3g} (core/optim.py, update_bound): the clip does not enter "
                 "it, since Adam's step does not depend on the gradient's scale."),
    ],
    "theory-02": [
        Question("The global norm of a step's gradient is 3.5 and grad_clip is 1.0: by what "
                 "factor is every gradient scaled?", lambda: clip_factor(3.5, 1.0),
                 lambda a: f"min(1, 1.0 / 3.5) = {a:.4f} (core/guards.py, global_factor): "
                 "every tensor shrinks by the same factor, so the direction is kept."),
        Question("And for a global norm of 0.4?", lambda: clip_factor(0.4, 1.0),
                 lambda a: f"min(1, 1.0 / 0.4) = {a:g}: below the threshold the clip does "
                 "nothing.", tol=0.0),
        Question("A weight with m = 0 gets one gradient of 50, then 10 steps of gradient 0, "
                 "with b1 = 0.9. What is its m after those 10 steps?",
                 lambda: m_after_spike(50.0, 10),
                 lambda a: f"(1 - 0.9) x 50 = 5 at the spike, then x 0.9 per quiet step: "
                 f"5 x 0.9^10 = {a:.4g} (core/optim.py's AdamW, run on one weight): the "
                 "spike keeps pushing for tens of steps."),
    ],
    "stability-check": [
        Question("The last 100 pre-clip norms of a run are 0.01, 0.02, ..., 1.00. What clip "
                 "does the stability check suggest (the 90th percentile of the last 100)?",
                 lambda: _suggested([i / 100 for i in range(1, 101)]),
                 lambda a: f"{a:.4g} (reports/measure.py, suggest_clip, on those norms): a "
                 "threshold most ordinary steps stay under, so it acts on outliers only."),
        Question("A spike's pre-clip norm is 12 times an ordinary norm of 0.3; the clip is "
                 "1.0. What fraction of the spike's gradient reaches the moments?",
                 lambda: clip_factor(12 * 0.3, 1.0),
                 lambda a: f"min(1, 1.0 / (12 x 0.3)) = {a:.3g} (core/guards.py)."),
    ],
}
PAGES = {"phase-19": "experiments/19-break-no-clip/README.md",
         "theory-02": "theory/02-optimizer-and-schedule.md",
         "stability-check": "theory/stability-check.md"}  # else experiments/NAME/README.md


def page(root, name: str):
    """The page whose quiz block holds `name`'s questions."""
    return root / PAGES.get(name, f"experiments/{name}/README.md")


def block(name: str) -> str:
    """The page's quiz block: each question, its answer and the working, computed now."""
    lines = []
    for i, q in enumerate(QUIZZES[name], 1):
        a = q.answer()
        lines += [f"{i}. {q.ask}", "", f"   <details><summary>answer</summary>{q.worked(a)}"
                  "</details>", ""]
    return "\n".join(lines).rstrip()


def right(answer: float, given: float, tol: float) -> bool:
    return math.isclose(given, answer, rel_tol=tol, abs_tol=1e-12 if tol == 0 else 0.0)


def ask(name: str, read: Callable[[str], str] = input, say: Callable[[str], None] = print
        ) -> tuple[int, int]:
    """Ask the questions of `name` one by one; returns (right, asked)."""
    score, asked = 0, 0
    for i, q in enumerate(QUIZZES[name], 1):
        say(f"\n{i}. {q.ask}")
        try:
            text = read("your answer: ").strip()
        except EOFError:  # input ran out: the rest are not asked
            say("")
            break
        asked += 1
        answer = q.answer()
        try:
            ok = right(answer, float(text), q.tol)
        except ValueError:
            ok = False
            say(f"   (not a number: {text!r})")
        score += ok
        say(f"   {'right' if ok else 'not quite'}: {q.worked(answer)}")
    n = len(QUIZZES[name])
    say(f"\nquiz {name}: {score}/{n}" + ("" if asked == n else f" ({n - asked} not answered)"))
    return score, n
