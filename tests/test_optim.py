"""The hand-written AdamW, clip and schedule against their PyTorch references."""

import math

import pytest
import torch

from minitrain.core.config import OptimizerConfig
from minitrain.core.flat import Flat
from minitrain.core.guards import NormGuard, clip_grads
from minitrain.core.optim import SGD, AdamW, lr_at, update_bound

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _model(dtype, device="cpu"):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)
    ).to(device, dtype)


def _groups(model, wd):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def _reference_clip(params, clip, exact):
    """torch's clip_grad_norm_, or (exact=True) the same norm with our factor formula:
    torch divides by norm + 1e-6, we by norm + 1e-12, which shows at float64 precision."""
    if not exact:
        return float(torch.nn.utils.clip_grad_norm_(params, clip or math.inf))
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    factor = min(1.0, (clip or math.inf) / (float(total) + 1e-12))
    for p in params:
        p.grad.mul_(factor)
    return float(total)


def _run_pair(dtype, clip, wd, steps=60, device="cpu"):
    ours_m, ref_m = _model(dtype, device), _model(dtype, device)
    ours = AdamW(_groups(ours_m, wd), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, grad_clip=clip)
    ref = torch.optim.AdamW(_groups(ref_m, wd), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(1)
    norms = []
    for step in range(steps):
        x = torch.randn(32, 6, generator=gen).to(device, dtype) * 3
        y = torch.randint(3, (32,), generator=gen).to(device)
        lr = lr_at(step, 1e-2, 10, steps, 0.1)
        ours.lr = lr
        for g in ref.param_groups:
            g["lr"] = lr
        for model in (ours_m, ref_m):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        stats = ours.step()
        ref_norm = _reference_clip(list(ref_m.parameters()), clip, exact=dtype == torch.float64)
        ref.step()
        norms.append((stats.grad_norm_pre_clip, ref_norm))
    a = torch.cat([p.detach().flatten() for p in ours_m.parameters()])
    b = torch.cat([p.detach().flatten() for p in ref_m.parameters()])
    return float((a - b).norm() / b.norm()), norms


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 5e-7)])
def test_adamw_matches_torch(clip, dtype, tol, device):
    rel, norms = _run_pair(dtype, clip, wd=0.1, device=device)
    assert rel < tol
    for ours, ref in norms:  # the pre-clip norm we log is torch's returned total norm
        assert ours == pytest.approx(ref, rel=1e-5)
    if clip is not None:  # the clip really acted in this test
        assert sum(ours > clip for ours, _ in norms) > 10


def test_reference_check_catches_a_wrong_weight_decay():
    """The tolerance above is tight enough to see a plausible bug (decay not scaled by lr)."""
    ours_m, ref_m = _model(torch.float32), _model(torch.float32)
    ours = AdamW(_groups(ours_m, 0.1 / 1e-2), lr=1e-2, betas=(0.9, 0.95))  # wd*lr = 0.1
    ref = torch.optim.AdamW(_groups(ref_m, 0.1), lr=1e-2, betas=(0.9, 0.95))
    x, y = torch.randn(32, 6), torch.randint(3, (32,))
    for _ in range(50):
        for model in (ours_m, ref_m):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        ours.step()
        ref.step()
    a = torch.cat([p.detach().flatten() for p in ours_m.parameters()])
    b = torch.cat([p.detach().flatten() for p in ref_m.parameters()])
    assert float((a - b).norm() / b.norm()) > 1e-4


def test_clip_worked_example():
    """Global norm 3.5 with max_norm 1.0: factor 1/3.5, new norm 1.0; norm 0.4 is untouched."""
    g = [torch.tensor([2.1, 0.0]), torch.tensor([[2.8]])]  # sqrt(2.1^2 + 2.8^2) = 3.5
    res = clip_grads(g, 1.0)
    assert res.grad_norm == pytest.approx(3.5)
    assert res.clip_factor == pytest.approx(1 / 3.5)
    assert res.post_norm == pytest.approx(1.0)
    assert math.sqrt(sum(float((t**2).sum()) for t in res.grads)) == pytest.approx(1.0)
    assert torch.equal(g[0], torch.tensor([2.1, 0.0]))  # the raw gradient is left alone
    small = [torch.tensor([0.24, 0.32])]  # norm 0.4
    res = clip_grads(small, 1.0)
    assert res.clip_factor == 1.0 and res.grads[0] is small[0]


def test_clip_matches_torch_and_off_means_off():
    torch.manual_seed(3)
    ours = [torch.randn(5, 4) * 10, torch.randn(7)]
    ref = [t.clone().requires_grad_() for t in ours]
    for r, o in zip(ref, ours):
        r.grad = o.clone()
    expected = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    res = clip_grads(ours, 1.0)
    assert res.grad_norm == pytest.approx(float(expected))
    for o, r in zip(res.grads, ref):
        torch.testing.assert_close(o, r.grad)
    big = [torch.full((3,), 1e6)]
    assert clip_grads(big, None).clip_factor == 1.0
    assert AdamW([torch.zeros(1)], grad_clip=math.inf).grad_clip is None


@pytest.mark.parametrize("mode,threshold", [("global", 1.0), ("global", None),
                                             ("per-tensor", 0.5), ("value", 0.3)])
def test_clip_into_a_flat_tensor_gives_the_same_bits(mode, threshold):
    """The optimizer clips into one flat copy (one op over all coordinates): bit for bit what
    the per-tensor clip gives, sizes with a vector tail included, and p.grad left alone."""
    torch.manual_seed(6)
    g = [torch.randn(37, 5) * 3, torch.randn(1031), torch.randn(7) * 1e-3, torch.randn(3, 3)]
    raw = [t.clone() for t in g]
    out = Flat(g)
    flat, ref = clip_grads(g, threshold, mode, out=out), clip_grads(g, threshold, mode)
    assert flat.post_norm == ref.post_norm and flat.clip_factor == ref.clip_factor
    for a, b in zip(flat.grads, ref.grads):
        assert a.shape == b.shape and torch.equal(a, b)
    assert all(a.data_ptr() == v.data_ptr() for a, v in zip(flat.grads, out.views))
    assert all(torch.equal(t, r) for t, r in zip(g, raw))


def test_flat_state_is_shared_by_the_views_and_saved_per_parameter():
    """m and v are views of one flat tensor each (what observers read is what the step
    changed); a state dict holds standalone copies, one per parameter, as checkpoints always
    did, and loading one restores the exact state."""
    model = _model(torch.float32)
    opt = AdamW(_groups(model, 0.1), lr=1e-2, grad_clip=0.5)
    x, y = torch.randn(32, 6), torch.randint(3, (32,))
    for _ in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.equal(torch.cat([opt.m[i].flatten() for i in opt.m_flat.order]), opt.m_flat.data)
    state = opt.state_dict()
    assert all(s.untyped_storage().nbytes() == s.numel() * s.element_size()
               for s in state["m"] + state["v"])
    other = AdamW(_groups(_model(torch.float32), 0.1), lr=1e-2, grad_clip=0.5)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.v, opt.v)) and other.t == 3
    # the logged update sizes are those of the change the step made
    before = [p.detach().clone() for p in model.parameters()]
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    stats = opt.step()
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert stats.update_max == pytest.approx(float(delta.abs().max()), rel=1e-5)
    assert stats.update_norm == pytest.approx(float(delta.norm()), rel=1e-4)


def test_schedule_warmup_then_cosine():
    peak, warm, total = 3e-3, 50, 600
    assert lr_at(0, peak, warm, total, 0.1) == pytest.approx(peak / 50)
    assert lr_at(49, peak, warm, total, 0.1) == pytest.approx(peak)
    assert lr_at(50, peak, warm, total, 0.1) == pytest.approx(peak)
    assert lr_at(325, peak, warm, total, 0.1) == pytest.approx(peak * 0.55)  # halfway: midpoint
    assert lr_at(600, peak, warm, total, 0.1) == pytest.approx(peak * 0.1)
    lrs = [lr_at(s, peak, warm, total, 0.1) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_per_tensor_and_value_clips_follow_their_definitions():
    torch.manual_seed(4)
    g = [torch.randn(6, 3) * 4, torch.randn(5) * 0.01, torch.randn(2, 2) * 2]
    norms = [float(t.norm()) for t in g]
    res = clip_grads(g, 1.0, "per-tensor")
    for raw, out, n in zip(g, res.grads, norms):  # each tensor scaled by its own factor
        torch.testing.assert_close(out, raw * min(1.0, 1.0 / (n + 1e-12)))
    assert [round(float(t.norm()), 5) for t in res.grads] == [1.0, round(norms[1], 5), 1.0]
    ref = [t.clone().requires_grad_() for t in g]  # value clipping against torch's own
    for r, t in zip(ref, g):
        r.grad = t.clone()
    torch.nn.utils.clip_grad_value_(ref, 0.5)
    res = clip_grads(g, 0.5, "value")
    for out, r in zip(res.grads, ref):
        torch.testing.assert_close(out, r.grad)
    flat = torch.cat([t.flatten() for t in res.grads])
    assert res.post_norm == pytest.approx(float(flat.norm()), rel=1e-6)


def test_global_clip_keeps_the_direction_and_value_clip_does_not():
    torch.manual_seed(5)
    g = [torch.randn(50) * torch.logspace(-2, 1, 50)]  # a few large coordinates dominate
    flat = g[0]
    cos = {mode: float(torch.nn.functional.cosine_similarity(clip_grads(g, 0.1, mode).grads[0],
                                                             flat, dim=0))
           for mode in ("global", "value")}
    assert cos["global"] == pytest.approx(1.0, abs=1e-6)
    assert cos["value"] < 0.95


def _guarded(norms, **kw):
    """Feed a stream of gradients with given global norms through AdamW with a guard."""
    p = torch.zeros(4, requires_grad=True)
    opt = AdamW([p], lr=0.1, weight_decay=0.0, guard=NormGuard(**kw))
    out = []
    for n in norms:
        p.grad = torch.tensor([n, 0.0, 0.0, 0.0])
        out.append(opt.step())
    return opt, out


def test_norm_guard_statistics_match_their_formulas():
    g = NormGuard(clip_z=2.0, ema=0.9, warmup=3)
    for x in (1.0, 2.0, 3.0):  # warm-up: plain mean and (population) variance
        g.observe(x)
    assert (g.mean, g.var) == (pytest.approx(2.0), pytest.approx(2 / 3))
    g.observe(4.0)  # then exponential: mean += 0.1 d, var = 0.9 (var + 0.1 d^2)
    assert g.mean == pytest.approx(2.2)
    assert g.var == pytest.approx(0.9 * (2 / 3 + 0.1 * 4.0))
    assert g.cap() == pytest.approx(2.2 + 2.0 * math.sqrt(0.9 * (2 / 3 + 0.4)))


def test_adaptive_clip_caps_an_outlier_and_skip_drops_it():
    ordinary = [1.0 + 0.1 * math.sin(i) for i in range(40)]
    opt, stats = _guarded(ordinary + [50.0, 1.0], clip_z=3.0, warmup=25)
    spike = stats[40]
    assert spike.grad_norm_pre_clip == 50.0
    assert 1.0 < spike.grad_norm_post_clip < 1.5 and not spike.skipped  # capped near mean+3std
    assert spike.grad_z > 100
    assert all(s.clip_factor == 1.0 for s in stats[:40])  # ordinary steps untouched
    opt, stats = _guarded(ordinary + [50.0, 1.0], skip_z=6.0, warmup=25)
    assert stats[40].skipped and stats[40].update_norm == 0.0 and opt.t == 41
    assert not stats[41].skipped  # the outlier did not enter the statistics
    assert opt.guard.count == 41


def test_sgd_matches_torch():
    for wd, clip in ((0.0, None), (0.05, 0.5)):
        ours_m, ref_m = _model(torch.float64), _model(torch.float64)
        ours = SGD(_groups(ours_m, wd), lr=0.05, momentum=0.9, grad_clip=clip)
        ref = torch.optim.SGD(_groups(ref_m, wd), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(2)
        for _ in range(40):
            x = torch.randn(32, 6, generator=gen).double() * 3
            y = torch.randint(3, (32,), generator=gen)
            for model in (ours_m, ref_m):
                model.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
            ours.step()
            _reference_clip(list(ref_m.parameters()), clip, exact=True)
            ref.step()
        for a, b in zip(ours_m.parameters(), ref_m.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_update_bound_holds_and_is_reached():
    """Adam's worst case per coordinate: exactly lr on the first update, and reached by the
    gradient sequence that makes Cauchy-Schwarz an equality (g_k grows as (b2 / b1)^k)."""
    o = OptimizerConfig(betas=[0.9, 0.998], eps=1e-30, weight_decay=0.0, grad_clip=None)
    assert update_bound(o, 1, 0.01) == pytest.approx(0.01)
    b1, b2 = o.betas
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = AdamW([p], lr=0.01, betas=o.betas, eps=o.eps, weight_decay=0.0)
    for t in range(1, 41):
        before = p.detach().clone()
        p.grad = torch.tensor([(b2 / b1) ** t], dtype=torch.float64)
        opt.step()
        assert float((p.detach() - before).abs()) == pytest.approx(update_bound(o, t, 0.01),
                                                                   rel=1e-9)
    gen = torch.Generator().manual_seed(0)  # and any other sequence stays below it
    opt = AdamW([p], lr=0.01, betas=o.betas, eps=1e-8, weight_decay=0.0)
    for t in range(1, 200):
        before = p.detach().clone()
        p.grad = torch.randn(1, generator=gen, dtype=torch.float64) * 10 ** (3 * torch.rand(
            1, generator=gen).item())
        opt.step()
        assert float((p.detach() - before).abs()) <= update_bound(o, t, 0.01) * (1 + 1e-9)


def test_sgd_bound_needs_the_clip():
    o = OptimizerConfig(name="sgd", momentum=0.9, weight_decay=0.0, grad_clip=None)
    assert update_bound(o, 5, 0.1) == math.inf
    o.grad_clip = 1.0
    assert update_bound(o, 3, 0.1) == pytest.approx(0.1 * (1 + 0.9 + 0.81))


def test_flat_norms_and_maxes_have_the_bits_of_the_per_tensor_ops():
    """Flat lays same-sized parameters side by side and reduces each size as one matrix: the
    bits of one reduction per tensor, in parameter order; the views still read and write
    their own parameter's coordinates."""
    torch.manual_seed(7)
    shapes = [(37, 5), (1031,), (7,), (5, 37), (3, 3), (7,), (64, 64), (1031,), (4096,)]
    params = [torch.randn(s) * 10 ** (i % 3) for i, s in enumerate(shapes)]
    flat = Flat(params)
    flat.fill(params)
    assert all(torch.equal(v, p) for v, p in zip(flat.views, params))
    assert torch.equal(flat.data, torch.cat([params[i].flatten() for i in flat.order]))
    assert torch.equal(flat.norms(), torch.stack(torch._foreach_norm(params)))
    assert torch.equal(flat.maxes(), torch.stack(torch._foreach_max(params)))
    if torch.cuda.is_available():  # CUDA sums in other orders: the same norms to rounding
        on_gpu = Flat([p.cuda() for p in params])
        on_gpu.fill([p.cuda() for p in params])
        torch.testing.assert_close(on_gpu.norms().cpu(), flat.norms())
        assert torch.equal(on_gpu.maxes().cpu(), flat.maxes())
