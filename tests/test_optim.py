"""The hand-written AdamW, clip and schedule against their PyTorch references."""

import math

import pytest
import torch

from minitrain.optim import AdamW, clip_grad_norm, lr_at


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)
    ).to(dtype)


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


def _run_pair(dtype, clip, wd, steps=60):
    ours_m, ref_m = _model(dtype), _model(dtype)
    ours = AdamW(_groups(ours_m, wd), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, grad_clip=clip)
    ref = torch.optim.AdamW(_groups(ref_m, wd), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(1)
    norms = []
    for step in range(steps):
        x = torch.randn(32, 6, generator=gen).to(dtype) * 3
        y = torch.randint(3, (32,), generator=gen)
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


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 5e-7)])
def test_adamw_matches_torch(clip, dtype, tol):
    rel, norms = _run_pair(dtype, clip, wd=0.1)
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
    res = clip_grad_norm(g, 1.0)
    assert res.grad_norm == pytest.approx(3.5)
    assert res.clip_factor == pytest.approx(1 / 3.5)
    assert math.sqrt(sum(float((t**2).sum()) for t in g)) == pytest.approx(1.0)
    small = [torch.tensor([0.24, 0.32])]  # norm 0.4
    res = clip_grad_norm(small, 1.0)
    assert res.clip_factor == 1.0 and torch.equal(small[0], torch.tensor([0.24, 0.32]))


def test_clip_matches_torch_and_off_means_off():
    torch.manual_seed(3)
    ours = [torch.randn(5, 4) * 10, torch.randn(7)]
    ref = [t.clone().requires_grad_() for t in ours]
    for r, o in zip(ref, ours):
        r.grad = o.clone()
    expected = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    res = clip_grad_norm(ours, 1.0)
    assert res.grad_norm == pytest.approx(float(expected))
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r.grad)
    big = [torch.full((3,), 1e6)]
    assert clip_grad_norm(big, None).clip_factor == 1.0
    assert AdamW([torch.zeros(1)], grad_clip=math.inf).grad_clip is None


def test_schedule_warmup_then_cosine():
    peak, warm, total = 3e-3, 50, 600
    assert lr_at(0, peak, warm, total, 0.1) == pytest.approx(peak / 50)
    assert lr_at(49, peak, warm, total, 0.1) == pytest.approx(peak)
    assert lr_at(50, peak, warm, total, 0.1) == pytest.approx(peak)
    assert lr_at(325, peak, warm, total, 0.1) == pytest.approx(peak * 0.55)  # halfway: midpoint
    assert lr_at(600, peak, warm, total, 0.1) == pytest.approx(peak * 0.1)
    lrs = [lr_at(s, peak, warm, total, 0.1) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
