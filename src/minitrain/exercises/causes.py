"""Which break a run shows, named from its logs (reports/symptoms.py), never from its config:
the rules are tried in order and the first that holds names the cause, with its evidence as
sentences of measured numbers. No rule holding is `healthy`.

Each threshold sits between what the healthy control and its break measured over several
seeds; the rounds block of experiments/break-it/README.md prints every number beside it (some
margins are wide, the plateau's is not)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from minitrain.core.rundir import load_run
from minitrain.reports import diagnose as diagnose_mod
from minitrain.reports.pages import fmt
from minitrain.reports.symptoms import symptoms

START_OVER_UNIFORM = 2.0  # step-0 loss above 2 x ln V: the fresh model is not near uniform
UNDER_FLOOR = 0.5  # whole-set loss under half the causal floor: the model reads the future
LR_ZERO_BEFORE = 0.5  # lr under 1% of its peak for good before half the run: a dead schedule
STUCK = 0.3  # whole-set loss still above floor + 0.3 (ln V - floor) at the end: not learning
PLATEAU = 0.15  # and improving by less than 15% over the run's last third
RISE = 0.1  # a rare-batch spike that lifted the whole-set loss by more than 0.1


LIMITS = {"loss_0 / ln V": f"bad-init above {START_OVER_UNIFORM:g}",
          "lowest whole / floor": f"causal-leak below {UNDER_FLOOR:g}",
          "lr ~0 from / steps": f"lr-schedule below {LR_ZERO_BEFORE:g}",
          "end above floor / (ln V - floor)": f"stuck above {STUCK:g}",
          "end / two-thirds": f"and above {1 - PLATEAU:g}"}


def margins(f: dict | None) -> dict:
    """The number each rule compares with its threshold (LIMITS), for a run's symptoms."""
    if f is None:
        return dict.fromkeys(LIMITS)

    def ratio(a, b):
        return None if a is None or not b else a / b

    gap = None if f["floor"] is None or f["ln_vocab"] is None else f["ln_vocab"] - f["floor"]
    return {"loss_0 / ln V": ratio(f["loss_0"], f["ln_vocab"]),
            "lowest whole / floor": ratio(f["whole_min"], f["floor"]),
            "lr ~0 from / steps": ratio(f["lr_zero_from"], f["steps"]),
            "end above floor / (ln V - floor)": ratio(
                None if f["whole_final"] is None or f["floor"] is None
                else f["whole_final"] - f["floor"], gap),
            "end / two-thirds": ratio(f["whole_final"], f["whole_third"])}


def _stuck(f: dict) -> bool:
    if f["whole_final"] is None or f["floor"] is None or f["ln_vocab"] is None:
        return False
    third = f["whole_third"]
    return f["whole_final"] > f["floor"] + STUCK * (f["ln_vocab"] - f["floor"]) and \
        third is not None and f["whole_final"] > (1 - PLATEAU) * third


def bad_init(f):
    if f["loss_0"] is not None and f["ln_vocab"] and f["loss_0"] > START_OVER_UNIFORM * \
            f["ln_vocab"]:
        return [f"step-0 loss {f['loss_0']:.1f} vs ln V = {f['ln_vocab']:.2f}, the loss of a "
                "uniform guess: the initial weights are far too large",
                f"weight norm at step 0: {f['weight_norm_0']:.4g}",
                f"steps clipped: {f['clipped_share']:.0%}"]
    return None


def causal_leak(f):
    if f["whole_min"] is not None and f["floor"] and f["whole_min"] < UNDER_FLOOR * f["floor"]:
        return [f"whole-set train loss {f['whole_min']:.3g}, below the corpus floor "
                f"{f['floor']:.3f} for a model that reads only the past (over the "
                f"{f['sentences_seen']} training sentences its logs hold)",
                f"validation loss {fmt(f['val_final'], '.3g')}: held-out text is predicted "
                "too, which memorising cannot do"]
    return None


def lr_schedule(f):
    z = f["lr_zero_from"]
    if z is not None and z < LR_ZERO_BEFORE * f["steps"]:
        return [f"lr under 1% of its peak {f['lr_peak']:.3g} from step {z} of {f['steps']} "
                "to the end", f"whole-set loss frozen at {f['whole_final']:.3g}"]
    return None


def no_warmup(f):
    if _stuck(f) and f["lr_0"] is not None and f["lr_0"] >= 0.5 * f["lr_peak"]:
        return [f"lr {f['lr_0']:.3g} at step 0, already the peak {f['lr_peak']:.3g}: no warm-up",
                f"step 0 moved single weights by {f['update_max_0']:.3g} (Adam's first step "
                "moves every weight by about the lr)",
                f"whole-set loss stuck at {f['whole_final']:.3g} (floor {f['floor']:.3f})"]
    return None


def lr_too_high(f):
    if _stuck(f):
        return [f"whole-set loss stuck at {f['whole_final']:.3g} (floor {f['floor']:.3f}, "
                f"ln V {f['ln_vocab']:.2f}) after a warm-up to lr {f['lr_peak']:.3g}",
                f"weight norm {f['weight_norm_0']:.3g} -> {f['weight_norm_final']:.3g}",
                f"median pre-clip gradient norm {f['grad_norm_median']:.3g}"]
    return None


def no_clip_rare_batch(f):
    for s in f["rare_batch_spikes"]:
        if s["rise"] is not None and s["rise"] > RISE and s["clip_factor"] > 0.5:
            words = ", ".join(f"{w} x{n}" for w, n in s["words"].items() if n)
            return [f"gradient-norm spike x{s['ratio']:.1f} the median at step {s['step']}, "
                    f"its batch holding the rare word ({words})",
                    f"the clip left {s['clip_factor']:.0%} of it",
                    f"whole-set loss rose {s['rise']:.3g} after it"]
    return None


RULES: list[tuple[str, Callable[[dict], list[str] | None]]] = [
    ("bad-init", bad_init), ("causal-leak", causal_leak), ("lr-schedule", lr_schedule),
    ("no-warmup", no_warmup), ("lr-too-high", lr_too_high),
    ("no-clip-rare-batch", no_clip_rare_batch),
]
CAUSES = [name for name, _ in RULES] + ["healthy"]  # or "not judged": a synthetic data kind


def name_cause(facts: dict) -> dict:
    """{"name": one of CAUSES, "evidence": [sentences]} for a run's symptoms."""
    if not facts.get("text", True):
        return {"name": "not judged", "evidence": [
            "the cause rules read a GPT trained on text; this run's data is synthetic"]}
    for name, rule in RULES:
        evidence = rule(facts)
        if evidence:
            return {"name": name, "evidence": evidence}
    return {"name": "healthy", "evidence": [
        f"whole-set loss {fmt(facts['whole_final'], '.3g')} at the end "
        f"(floor {fmt(facts['floor'], '.3f')}), no rule above held"]}


def diagnose(path: str | Path, **overrides) -> dict:
    """`minitrain diagnose`: the run's spikes (reports/diagnose.py), its symptoms and the
    cause they name."""
    run = load_run(path)  # once: its token log serves the spikes and the symptoms
    result = diagnose_mod.diagnose(run, **overrides)
    result["symptoms"] = symptoms(run, result["spikes"])
    result["cause"] = name_cause(result["symptoms"])
    return result
