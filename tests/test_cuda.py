"""The CUDA path: a GPU run against the same run on the CPU, against itself, and in bf16, fp16
and compiled form; a checkpoint written on the GPU going on on the CPU. Skipped where torch sees
no CUDA device (CI has none); `bench/gpu.sh` runs them on a GPU machine."""

import signal

import numpy as np
import pytest
import torch

from minitrain.core.rundir import load_run
from test_run import _cli, _run, _start, _wait_for_steps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

GPU = ["train.device=cuda"]
COLUMNS = ("loss", "grad_norm_pre_clip", "update_norm", "weight_norm", "train_loss", "val_loss")


@pytest.fixture(scope="module")
def cpu_and_gpu(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("devices")
    return _run(tmp, "cpu")[1], _run(tmp, "gpu", GPU)[1]


def test_gpu_run_matches_the_cpu_run(cpu_and_gpu):
    """Same batches (they are drawn on the CPU); the numbers agree to fp32 tolerance (the
    kernels sum in other orders, and 40 Adam steps carry the differences along)."""
    cpu, gpu = cpu_and_gpu
    assert gpu.summary["device"] == "cuda" and gpu.summary["status"] == "completed"
    assert gpu.batches == cpu.batches  # a guard: the sampler must stay off the device
    for key in COLUMNS:
        np.testing.assert_allclose(gpu.column(key), cpu.column(key), rtol=1e-4, err_msg=key)
    np.testing.assert_allclose(gpu.token_losses()["loss"], cpu.token_losses()["loss"],
                               rtol=1e-3, atol=1e-4)


def test_gpu_run_repeats_bit_for_bit(cpu_and_gpu, tmp_path):
    """docs/run-format.md: on one GPU, same config and seed, the logs repeat byte for byte
    (deterministic algorithms and a fixed cuBLAS workspace)."""
    _, gpu = cpu_and_gpu
    _, again = _run(tmp_path, "again", GPU)
    for name in ("metrics.jsonl", "moments.jsonl", "token_losses.bin"):
        assert (again.path / name).read_bytes() == (gpu.path / name).read_bytes(), name


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_on_gpu_keeps_fp32_state(cpu_and_gpu, tmp_path, dtype):
    """Autocast changes the forward's arithmetic, not the state: weights and moments stay fp32,
    the losses stay near the fp32 run's; fp16 logs its loss scale."""
    _, fp32 = cpu_and_gpu
    summary, low = _run(tmp_path, dtype, [*GPU, f"train.dtype={dtype}",
                                          "train.checkpoint_every=40"])
    assert summary["status"] == "completed"
    assert low.metrics != fp32.metrics
    np.testing.assert_allclose(low.column("loss"), fp32.column("loss"), rtol=2e-2)
    np.testing.assert_allclose(low.column("train_loss"), fp32.column("train_loss"), rtol=1e-2)
    assert ("loss_scale" in low.metrics[0]) == (dtype == "float16")
    state = torch.load(low.path / "checkpoint.pt", weights_only=True)
    tensors = [*state["model"].values(), *state["optimizer"]["m"], *state["optimizer"]["v"]]
    assert {t.dtype for t in tensors} == {torch.float32}


def test_compiled_model_on_gpu_matches_eager(cpu_and_gpu, tmp_path):
    _, eager = cpu_and_gpu
    short = ["train.steps=5", "train.checkpoint_every=0"]
    _, compiled = _run(tmp_path, "compiled", [*GPU, *short, "train.compile=true"])
    for key in COLUMNS:
        np.testing.assert_allclose(compiled.column(key), eager.column(key)[:5], rtol=1e-4,
                                   err_msg=key)


def test_gpu_checkpoint_goes_on_on_the_cpu(cpu_and_gpu, tmp_path):
    """A GPU run killed part-way resumes on the CPU: the steps before the checkpoint are the GPU
    run's, and the whole run ends near the all-CPU run."""
    cpu, gpu = cpu_and_gpu
    out = tmp_path / "moved"
    proc = _start(out, [*GPU, "train.checkpoint_every=7"])
    _wait_for_steps(out, 16)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    r = _cli("train", "--resume", str(out), "--set", "train.device=cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    moved = load_run(out)
    start = moved.summary["resumed_at_step"]
    assert moved.summary["status"] == "completed" and moved.summary["device"] == "cpu"
    assert start >= 7 and start % 7 == 0
    for key in COLUMNS:  # (the bit-for-bit repeat is the test above's business)
        np.testing.assert_allclose(moved.column(key)[:start], gpu.column(key)[:start],
                                   rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(moved.column(key), cpu.column(key), rtol=1e-4, err_msg=key)
