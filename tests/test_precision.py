"""Loss scaling: gradients are unscaled before the clip sees them, overflow drops the step and
halves the scale, clean steps grow it back."""

import math

import pytest
import torch

from minitrain.core.optim import AdamW
from minitrain.core.precision import LossScaler


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _train(scaler):
    model = _model()
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0, grad_clip=0.5)
    gen = torch.Generator().manual_seed(1)
    norms = []
    for _ in range(20):
        x, y = torch.randn(32, 6, generator=gen) * 3, torch.randint(3, (32,), generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if scaler:
            scaler.scaled(loss).backward()
            assert scaler.unscale_(opt.params)
        else:
            loss.backward()
        stats = opt.step()
        norms.append((stats.grad_norm_pre_clip, stats.grad_norm_post_clip))
    return model, norms


def test_unscale_comes_before_the_clip():
    """With a scale of 2^10 the clip must act on the true gradient: same norms, same weights
    as without scaling. Clipping the scaled gradient would give post-clip norms 1024x too
    small."""
    plain, plain_norms = _train(None)
    scaled, scaled_norms = _train(LossScaler(scale=2.0**10))
    for (a_pre, a_post), (b_pre, b_post) in zip(plain_norms, scaled_norms):
        assert math.isclose(a_pre, b_pre, rel_tol=1e-5) and math.isclose(a_post, b_post,
                                                                         rel_tol=1e-5)
    assert any(post < pre for pre, post in plain_norms)  # the clip acted
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_overflow_halves_and_clean_steps_double():
    s = LossScaler(scale=1024.0, growth_interval=3)
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([float("inf"), 1.0])
    assert not s.unscale_([p])
    s.update(False)
    assert s.scale == 512.0 and s.good_steps == 0
    for _ in range(3):
        p.grad = torch.tensor([1.0, 1.0])
        assert s.unscale_([p])
        s.update(True)
    assert s.scale == 1024.0 and s.good_steps == 0
    s.load_state_dict({"scale": 8.0, "good_steps": 1})
    assert s.state_dict() == {"scale": 8.0, "good_steps": 1}


def test_fp16_training_unscales_before_the_clip(tmp_path):
    """In the loop: an fp16 run logs (and clips) the unscaled gradient norm, the one its fp32
    twin logs, not one 2^16 times larger; its metrics carry the loss scale."""
    from conftest import ROOT
    from minitrain.core import config
    from minitrain.core.rundir import load_run
    from minitrain.core.train import train

    tiny = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.steps=5",
            "optimizer.grad_clip=1.0", "train.extra_logs=[]"]
    runs = {}
    for dtype in ("float32", "float16"):
        cfg = config.load(ROOT / "experiments/19-control/config.yaml", [*tiny,
                                                                        f"train.dtype={dtype}"])
        train(cfg, tmp_path / dtype, progress=False)
        runs[dtype] = load_run(tmp_path / dtype)
    a, b = runs["float32"].metrics[0], runs["float16"].metrics[0]
    assert b["grad_norm_pre_clip"] == pytest.approx(a["grad_norm_pre_clip"], rel=0.02)
    assert b["grad_norm_post_clip"] <= 1.0 + 1e-6 and b["loss_scale"] == 2.0**16
    assert "loss_scale" not in a


def test_an_fp16_overflow_drops_the_step_and_the_run_goes_on(tmp_path, monkeypatch):
    from conftest import ROOT
    from minitrain.core import config
    from minitrain.core import train as train_mod
    from minitrain.core.rundir import load_run

    monkeypatch.setattr(train_mod, "LossScaler", lambda: LossScaler(scale=2.0**40))
    cfg = config.load(ROOT / "experiments/19-control/config.yaml", [
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.steps=40",
        "train.extra_logs=[]", "train.dtype=float16"])
    assert train_mod.train(cfg, tmp_path / "run", progress=False)["status"] == "completed"
    m = load_run(tmp_path / "run").metrics
    dropped = [r["step"] for r in m if r["skipped"]]
    assert dropped and dropped == list(range(len(dropped)))  # the first steps, until it fits
    assert all(r["update_norm"] == 0 for r in m[:len(dropped)]) and m[-1]["update_norm"] > 0
    scales = [r["loss_scale"] for r in m[:len(dropped) + 1]]
    assert all(b == a / 2 for a, b in zip(scales, scales[1:]))


def test_an_uncompiled_run_is_deterministic_without_the_compiler(tmp_path):
    """train() turns deterministic kernels on; unless the forward is compiled it does so
    without importing torch's compiler (about 1.7 s of CPU a process on the CI machine)."""
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import sys, torch\n"
        "from minitrain.core import config\n"
        "from minitrain.core.train import train\n"
        f"cfg = config.load({str(ROOT / 'experiments/healthy/config.yaml')!r}, "
        "['train.steps=2'])\n"
        f"train(cfg, {str(tmp_path / 'run')!r}, progress=False)\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "print('torch._inductor' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
