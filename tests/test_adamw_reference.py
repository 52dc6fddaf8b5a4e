"""The fast flat-tensor AdamW against the readable per-tensor one, bit for bit, and the readable
one against torch.optim.AdamW; theory/02 quotes the readable one and must not go stale."""

import inspect
import re
import textwrap

import pytest
import torch

from conftest import ROOT
from minitrain.core import adamw_reference
from minitrain.core.adamw_reference import ReferenceAdamW
from minitrain.core.config import ModelConfig
from minitrain.core.model import GPT
from minitrain.core.optim import AdamW, param_groups

V, T, STEPS = 11, 8, 30
HYPER = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8)
CLIP = 0.5  # below the norm on some of the 30 steps, above it on others (checked below)


def _gpt(dtype=torch.float32):
    # n_embd 12, V 11: most tensor sizes are not a multiple of a SIMD width, so stepped one
    # by one they end in the scalar tails of torch's vectorised loops, where the flat one does not
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=12, block_size=T, tie_weights=False)
    return GPT(cfg, V).to(dtype)


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(V, (4, T), generator=gen), torch.randint(V, (4, T), generator=gen))
            for _ in range(STEPS)]


def _backward(model, x, y):
    logits = model(x)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()


def _same_bits(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _race(clip, reference=ReferenceAdamW):
    """Step the fast AdamW and `reference` on identical models and batches; yield, per step,
    (fast, ref, fast's StepStats, ref's returned norm)."""
    fast_model, ref_model = _gpt(), _gpt()
    fast_groups, _ = param_groups(fast_model, 0.1)
    ref_groups, _ = param_groups(ref_model, 0.1)
    fast = AdamW(fast_groups, weight_decay=0.1, grad_clip=clip, **HYPER)
    ref = reference(ref_groups, grad_clip=clip, **HYPER)
    assert _same_bits(fast.params, ref.params)
    for x, y in _batches():
        fast.zero_grad()
        _backward(fast_model, x, y)
        stats = fast.step()
        ref_model.zero_grad(set_to_none=True)
        _backward(ref_model, x, y)
        yield fast, ref, stats, ref.step()


@pytest.mark.parametrize("clip", [None, CLIP])
def test_fast_adamw_has_the_bits_of_the_reference(clip):
    """Every op is elementwise (rounded per coordinate) except the global norm, which both
    take the same way (per-tensor norms, then their norm), so fp32 agrees to the bit."""
    clipped = 0
    for fast, ref, stats, ref_norm in _race(clip):
        assert stats.grad_norm_pre_clip == ref_norm
        assert _same_bits(fast.params, ref.params)
        assert _same_bits(fast.m, ref.m)
        assert _same_bits(fast.v, ref.v)
        clipped += stats.clip_factor < 1.0
    assert 0 < clipped < STEPS if clip else clipped == 0


def _mutant(old: str, new: str) -> type:
    """ReferenceAdamW with one line of its step changed: a plausible slip, or the same maths
    rounded in another order."""
    source = textwrap.dedent(inspect.getsource(ReferenceAdamW.step))
    assert source.count(old) == 1
    scope = {}
    exec(source.replace(old, new), dict(vars(adamw_reference)), scope)
    return type("Mutant", (ReferenceAdamW,), {"step": scope["step"]})


MUTANTS = {
    # torch.nn.utils.clip_grad_norm_'s denominator
    "clip 1e-6": ("(g_norm + 1e-12)", "(g_norm + 1e-6)"),
    # eps inside the bias correction: eps / sqrt(1 - b2^t) in effect
    "eps placement": ("v.sqrt() / math.sqrt(1 - b2**self.t) + eps",
                      "(v.sqrt() + eps) / math.sqrt(1 - b2**self.t)"),
    # the same maths as torch.optim.AdamW writes it: p *= 1 - lr wd first
    "decay first": ("update.add_(p, alpha=lr * wd)", "p.mul_(1 - lr * wd)"),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_bitwise_check_sees_a_changed_line(name):
    mutant = _mutant(*MUTANTS[name])
    races = _race(CLIP, mutant)  # stops at the first step that differs
    assert any(not _same_bits(fast.params, ref.params) for fast, ref, _, _ in races)


def test_reference_matches_torch_adamw_in_float64():
    """No clip (torch's AdamW has none). torch decays p first and folds the step into
    addcdiv_: the same maths rounded in another order, so equal to 1e-12, not to the bit.
    A smaller lr than above: where |g| is near eps, Adam turns a rounding in g into about
    lr / eps times as much in p, and the run compounds it (at 3e-2: 5e-12 after 30 steps)."""
    hyper = dict(HYPER, lr=3e-3)  # 1e-14 apart after 30 steps
    ours_model, torch_model = _gpt(torch.float64), _gpt(torch.float64)
    ours = ReferenceAdamW(param_groups(ours_model, 0.1)[0], **hyper)
    theirs = torch.optim.AdamW(param_groups(torch_model, 0.1)[0], **hyper)
    for x, y in _batches():
        for model, opt in ((ours_model, ours), (torch_model, theirs)):
            model.zero_grad(set_to_none=True)
            _backward(model, x, y)
            opt.step()
    params = [p for g in theirs.param_groups for p in g["params"]]  # ours.params' order
    for p, q, m, v in zip(params, ours.params, ours.m, ours.v, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)
        torch.testing.assert_close(m, theirs.state[p]["exp_avg"], rtol=0, atol=1e-12)
        torch.testing.assert_close(v, theirs.state[p]["exp_avg_sq"], rtol=0, atol=1e-12)


def test_theory_page_quotes_the_reference_step():
    page = (ROOT / "theory/02-optimizer-and-schedule.md").read_text(encoding="utf-8")
    quoted = re.search(r"<!-- quoted:adamw_reference -->\n```python\n(.*?)```\n<!-- /quoted -->",
                       page, re.S)
    assert quoted, "theory/02 lost its quoted ReferenceAdamW.step"
    assert quoted.group(1) == textwrap.dedent(inspect.getsource(ReferenceAdamW.step))
