"""Real short runs: the run directory a user reads, a diverged run, half-written directories,
and the compare on all of them."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from minitrain.core import config, rundir
from minitrain.core.corpus import read_sentences
from minitrain.core.rundir import RunDirError, load_run
from minitrain.core.train import train
from minitrain.reports.compare import report
from minitrain.reports.measure import sentence_texts

TINY = ["data.vocab_size=400", "data.batch_size=8", "data.sampler=random", "train.threads=1",
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
        "train.steps=40", "train.eval_every=1", "optimizer.warmup_steps=5"]


def _run(tmp_path, name, extra=()):
    cfg = config.load("experiments/19-control/config.yaml", [*TINY, *extra])
    summary = train(cfg, tmp_path / name, progress=False)
    return summary, load_run(tmp_path / name)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    import os
    os.chdir(rundir.Path(__file__).resolve().parents[1])
    return _run(tmp, "a"), _run(tmp, "b", ["optimizer.grad_clip=null"])


def test_run_directory_contents(pair):
    (summary, run), _ = pair
    assert summary["status"] == "completed" and summary["steps_completed"] == 40
    assert json.loads((run.path / "summary.json").read_text())["status"] == "completed"
    resolved = yaml.safe_load((run.path / "config.resolved.yaml").read_text())
    assert resolved["train"]["steps"] == 40 and resolved["optimizer"]["grad_clip"] == 1.0
    assert len(run.metrics) == 40 and [m["step"] for m in run.metrics] == list(range(40))
    for key in ("loss", "lr", "grad_norm_pre_clip", "grad_norm_post_clip", "clip_factor",
                "update_norm", "weight_norm", "train_loss", "val_loss", "tokens"):
        assert all(m[key] is not None for m in run.metrics), key
    for m in run.metrics:  # the clip did what the formula says
        assert m["grad_norm_post_clip"] <= 1.0 + 1e-6
        assert m["clip_factor"] == pytest.approx(min(1.0, 1.0 / (m["grad_norm_pre_clip"] + 1e-12)))
    # batches: 8 sentence ids per step and the tracked counts match the ids
    train_sents = read_sentences("corpus/train.txt")
    for b in run.batches:
        assert len(b["sentence_ids"]) == 8
        assert b["words"]["written"] == sum("written" in train_sents[i] for i in b["sentence_ids"])
    # per-token losses: one record per scored token, and they average to the logged loss
    for step in (0, 17, 39):
        tl = run.token_losses(step)
        assert len(tl) == run.metrics[step]["tokens"]
        assert float(tl["loss"].mean()) == pytest.approx(run.metrics[step]["loss"], rel=1e-5)
        texts = sentence_texts(run, step)
        assert [sid for sid, _ in texts] == run.batches[step]["sentence_ids"]
        assert all(train_sents[sid] == text for sid, text in texts)
    # moments: per tensor, tracked rows, and per-tensor norms that add up to the global norm
    mom = run.moments[10]
    total = np.sqrt(sum(t["grad_norm"] ** 2 for t in mom["tensors"].values()))
    assert total == pytest.approx(run.metrics[10]["grad_norm_pre_clip"], rel=1e-5)
    assert "wte.weight" in mom["tensors"] and mom["tracked"]
    assert all(v["v_max"] >= 0 for v in mom["tensors"].values())


def test_same_seed_same_batches(pair):
    (_, a), (_, b) = pair
    assert [x["sentence_ids"] for x in a.batches] == [x["sentence_ids"] for x in b.batches]
    assert b.metrics[0]["clip_factor"] == 1.0 and b.config["optimizer"]["grad_clip"] is None


def test_compare_writes_summary_and_png(pair, tmp_path, capsys):
    (_, a), (_, b) = pair
    res = report(a.path, b.path, tmp_path)
    out = capsys.readouterr().out
    assert res["spike_step"] is not None and f"spike step {res['spike_step']}" in out
    png = tmp_path / "compare-a-vs-b.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diverged_run_is_kept_and_compared(pair, tmp_path, capsys):
    (_, a), _ = pair
    summary, run = _run(tmp_path, "boom", ["optimizer.lr=1e6", "optimizer.grad_clip=null",
                                           "optimizer.warmup_steps=0"])
    assert summary["status"] == "diverged"
    step = summary["diverged_at_step"]
    assert step < 40 and len(run.metrics) == step + 1
    last = run.metrics[-1]
    assert last["loss"] is None or last["grad_norm_pre_clip"] is None  # NaN/inf stored as null
    report(a.path, run.path, tmp_path)
    assert "diverged" in capsys.readouterr().out


def test_truncated_logs_still_read(pair, tmp_path):
    (_, a), _ = pair
    import shutil
    cut = tmp_path / "cut"
    shutil.copytree(a.path, cut)
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "loss": 1.2')  # a hard kill mid-line
    with open(cut / "token_losses.bin", "ab") as f:
        f.write(b"\x01\x02\x03")  # and mid-record
    run = load_run(cut)
    assert len(run.metrics) == 40
    assert len(run.token_losses()) == len(a.token_losses())


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minitrain", *args], capture_output=True,
                          text=True)


def test_compare_bad_input_is_one_line_exit_2(pair, tmp_path):
    (_, a), _ = pair
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.resolved.yaml").write_text("seed: 1\n")
    for bad in (tmp_path / "nope", tmp_path / "half"):
        r = _cli("compare", str(a.path), str(bad))
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("minitrain: error:") and r.stderr.count("\n") == 1


def test_train_refuses_to_mix_runs(pair):
    (_, a), _ = pair
    r = _cli("train", "experiments/19-control/config.yaml", "--out", str(a.path), "--quiet")
    assert r.returncode == 2 and "--force" in r.stderr
    assert load_run(a.path).summary["status"] == "completed"  # nothing lost


def test_missing_run_files_error():
    with pytest.raises(RunDirError, match="not a run directory"):
        load_run("does/not/exist")


def test_same_config_same_bytes(pair, tmp_path):
    (_, a), _ = pair
    _run(tmp_path, "again")
    for name in ("metrics.jsonl", "batches.jsonl", "moments.jsonl", "token_losses.bin"):
        assert (tmp_path / "again" / name).read_bytes() == (a.path / name).read_bytes(), name


def test_an_error_in_the_loop_leaves_the_run_failed(tmp_path, monkeypatch):
    """An error inside the loop (here the sixth forward pass raises, as running out of GPU
    memory would) reaches the caller, and summary.json says `failed` with the error instead
    of `completed`; the logs hold the five steps before it, and a sweep would train it again."""
    import minitrain.loop as loop_mod

    real, calls = loop_mod.token_losses, []

    def out_of_memory_at_the_sixth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "token_losses", out_of_memory_at_the_sixth)
    with pytest.raises(RuntimeError, match="out of memory"):
        _run(tmp_path, "failed")
    run = load_run(tmp_path / "failed")
    assert run.summary["status"] == "failed" and run.summary["steps_completed"] == 5
    assert run.summary["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert [m["step"] for m in run.metrics] == [0, 1, 2, 3, 4]
    from minitrain.tools.sweep import done_before

    assert not done_before(run.path, config.load("experiments/19-control/config.yaml", TINY))


def test_ctrl_c_ends_interrupted_with_files_consistent(tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "int"
    args = [sys.executable, "-m", "minitrain", "train", "experiments/19-control/config.yaml",
            "--out", str(out), "--quiet", *(x for kv in TINY[:-3] for x in ("--set", kv)),
            "--set", "train.steps=100000"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        m = out / "metrics.jsonl"
        if m.exists() and m.read_text().count("\n") >= 5:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    run = load_run(out)
    assert run.summary["status"] == "interrupted"
    n = run.summary["steps_completed"]
    assert len(run.metrics) == len(run.batches) == len(run.moments) == n
    assert int(run.token_losses()["step"].max()) == n - 1
    assert os.path.getsize(out / "token_losses.bin") % 24 == 0


def test_diagnose_reads_a_diverged_run_and_bad_dirs_fail_cleanly(tmp_path):
    from minitrain.reports.diagnose import diagnose

    summary, run = _run(tmp_path, "boom", ["optimizer.lr=1e6", "optimizer.grad_clip=null",
                                           "optimizer.warmup_steps=0"])
    result = diagnose(run.path)
    assert result["status"] == "diverged"
    r = _cli("diagnose", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.startswith("minitrain: error:")
    r = _cli("diagnose", str(run.path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "diverged"


def _start(out, extra=()):
    args = [sys.executable, "-m", "minitrain", "train", "experiments/19-control/config.yaml",
            "--out", str(out), "--quiet", *(x for kv in [*TINY, *extra] for x in ("--set", kv))]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(out, n):
    import time
    deadline = time.time() + 60
    while time.time() < deadline:
        m = out / "metrics.jsonl"
        if m.exists() and m.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not get going")


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_resume_gives_the_uninterrupted_run(pair, tmp_path, how):
    import signal

    (_, a), _ = pair  # 40 steps, uninterrupted
    out = tmp_path / how
    proc = _start(out, ["train.checkpoint_every=7"])
    _wait_for_steps(out, 16)
    proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    proc.communicate(timeout=60)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == ("interrupted" if how == "ctrl-c" else "running")
    r = _cli("train", "--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    resumed = load_run(out)
    assert resumed.summary["status"] == "completed" and resumed.summary["resumed_at_step"] >= 7
    for name in ("metrics.jsonl", "batches.jsonl", "moments.jsonl", "token_losses.bin"):
        assert (out / name).read_bytes() == (a.path / name).read_bytes(), name


def test_bad_checkpoints_are_one_line_errors(pair, tmp_path):
    import shutil

    (_, a), _ = pair
    bad = tmp_path / "bad"
    shutil.copytree(a.path, bad)
    r = _cli("train", "--resume", str(bad))
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    for content in (b"not a checkpoint", b"PK\x03\x04 broken zip"):
        (bad / "checkpoint.pt").write_bytes(content)
        r = _cli("train", "--resume", str(bad))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "not a minitrain checkpoint" in r.stderr
    import torch
    torch.save({"format": 1, "step": 3, "model": {"evil": torch.zeros(1)}}, bad / "checkpoint.pt")
    r = _cli("train", "--resume", str(bad))
    assert r.returncode == 2 and "does not fit" in r.stderr


def _free_port() -> int:
    """A port nothing listens on now, so two test runs (or a stale process) never collide."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one_with_the_same_global_batch(pair, tmp_path):
    """torchrun, 2 CPU processes, gloo: each trains on half the batch; the gradients summed
    across them (and so the clip's global norm and every update) match one process."""
    (_, one), _ = pair
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={_free_port()}", "-m", "minitrain", "train",
            "experiments/19-control/config.yaml", "--out", str(tmp_path / "ddp"), "--quiet",
            *(x for kv in TINY for x in ("--set", kv))]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    two = load_run(tmp_path / "ddp")
    assert two.summary["world_size"] == 2 and one.summary["world_size"] == 1
    assert [b["sentence_ids"] for b in two.batches] == [b["sentence_ids"] for b in one.batches]
    for key in ("loss", "grad_norm_pre_clip", "grad_norm_post_clip", "update_norm",
                "weight_norm", "train_loss", "val_loss"):
        np.testing.assert_allclose(two.column(key), one.column(key), rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(two.token_losses()["loss"], one.token_losses()["loss"],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_exit_2(tmp_path):
    r = _cli("train", "experiments/19-control/config.yaml", "--out", str(tmp_path / "gpu"),
             "--set", "train.device=cuda")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "train.device: cuda" in r.stderr and "no CUDA device" in r.stderr
    assert not (tmp_path / "gpu").exists()  # refused before anything was written


def test_bf16_autocast_on_cpu_trains_with_fp32_state(pair, tmp_path):
    """dtype bfloat16: the forward pass runs in bf16 (the losses move), the weights, Adam's
    moments and the logged losses stay fp32 and close to the fp32 run."""
    import torch

    (_, fp32), _ = pair
    summary, bf16 = _run(tmp_path, "bf16", ["train.dtype=bfloat16", "train.checkpoint_every=40"])
    assert summary["status"] == "completed" and summary["device"] == "cpu"
    assert bf16.metrics != fp32.metrics  # autocast did change the arithmetic
    np.testing.assert_allclose(bf16.column("loss"), fp32.column("loss"), rtol=2e-2)
    np.testing.assert_allclose(bf16.column("train_loss"), fp32.column("train_loss"), rtol=1e-2)
    state = torch.load(bf16.path / "checkpoint.pt", weights_only=True)
    tensors = [*state["model"].values(), *state["optimizer"]["m"], *state["optimizer"]["v"]]
    assert {t.dtype for t in tensors} == {torch.float32}


def test_resume_may_move_device_only(pair, tmp_path):
    """`--resume RUN --set train.device=...` (a CUDA run going on on a CPU): the checkpoint
    loads onto the CPU whatever wrote it; nothing else may change on resume."""
    import signal

    (_, a), _ = pair
    run = tmp_path / "moved"
    proc = _start(run, ["train.checkpoint_every=8"])  # the last at step 40, the last step
    _wait_for_steps(run, 16)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    r = _cli("train", "--resume", str(run), "--set", "optimizer.lr=1", "--quiet")
    assert r.returncode == 2 and "other than train.device" in r.stderr
    r = _cli("train", "--resume", str(run), "--set", "train.device=cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (run / "metrics.jsonl").read_bytes() == (a.path / "metrics.jsonl").read_bytes()
    done = (run / "summary.json").read_bytes()
    r = _cli("train", "--resume", str(run), "--quiet")
    assert r.returncode == 2 and "already trained all 40 steps" in r.stderr
    assert (run / "summary.json").read_bytes() == done


def test_compiled_model_matches_eager(tmp_path):
    """train.compile: torch.compile (inductor, on this CPU) gives the eager run's numbers to
    float tolerance (fused kernels round differently). 3 steps: compiling takes ~15 s here."""
    short = ["train.steps=3", "train.checkpoint_every=0"]
    _, eager = _run(tmp_path, "eager", short)
    from torch._dynamo.utils import counters

    counters.clear()
    _, compiled = _run(tmp_path, "compiled", [*short, "train.compile=true"])
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did compile the model
    for key in ("loss", "grad_norm_pre_clip", "update_norm", "weight_norm", "train_loss"):
        np.testing.assert_allclose(compiled.column(key), eager.column(key), rtol=1e-5,
                                   err_msg=key)
    np.testing.assert_allclose(compiled.token_losses()["loss"], eager.token_losses()["loss"],
                               rtol=1e-4, atol=1e-5)


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Two gloo processes (the environment torchrun would give them); only rank 1 gets SIGINT,
    twice, as torchrun under a terminal delivers it, and at steps the other rank does not see.
    Both stop after the same step:
    rank 0's logs and checkpoint hold the same whole steps."""
    import os
    import signal

    out = tmp_path / "ddp-int"
    args = [sys.executable, "-m", "minitrain", "train", "experiments/19-control/config.yaml",
            "--out", str(out), "--quiet", *(x for kv in TINY[:-3] for x in ("--set", kv)),
            "--set", "train.steps=100000", "--set", "train.checkpoint_every=0"]
    procs, port = [], str(_free_port())
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    _wait_for_steps(out, 5)
    for _ in range(2):  # a terminal's Ctrl-C, then torchrun forwarding it: one request
        procs[1].send_signal(signal.SIGINT)
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [130, 130], [e[-1500:] for e in errs]
    run = load_run(out)
    assert run.summary["status"] == "interrupted" and run.summary["world_size"] == 2
    n = run.summary["steps_completed"]
    assert len(run.metrics) == len(run.batches) == len(run.moments) == n >= 5
    assert int(run.token_losses()["step"].max()) == n - 1
    import torch
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == n


def _until(proc, done, seconds=60):
    """Poll (every half millisecond) until `done()` or the process ends."""
    import time

    deadline = time.time() + seconds
    while not done() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.0005)


def test_killed_at_random_moments_resumes_to_the_same_bytes(pair, tmp_path):
    """SIGKILL at ten seeded moments (three of them as a checkpoint is being written): each
    time, resuming (or, killed before the first checkpoint, starting again) ends in logs
    byte-identical to the uninterrupted run's."""
    import random
    import signal
    import time

    (_, a), _ = pair  # 40 steps, uninterrupted
    rng, resumed = random.Random(19), []
    for trial in range(10):
        out = tmp_path / f"kill-{trial}"
        proc = _start(out, ["train.checkpoint_every=5"])
        if trial < 3:  # as the temp checkpoint is written: the first, second or third one
            tmp = out / "checkpoint.pt.tmp"
            for _ in range(trial):  # let `trial` writes go by
                _until(proc, tmp.exists)
                _until(proc, lambda p=tmp: not p.exists())
            _until(proc, tmp.exists)
        else:
            _wait_for_steps(out, rng.randint(0, 38))
            time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        again = _cli("train", "--resume", str(out), "--quiet")
        if "no checkpoint to resume from" in again.stderr:
            again = _cli("train", "experiments/19-control/config.yaml", "--out", str(out),
                         "--quiet", "--force", *(x for kv in TINY for x in ("--set", kv)))
        assert again.returncode == 0, (trial, again.stderr)
        for name in ("metrics.jsonl", "batches.jsonl", "moments.jsonl", "token_losses.bin"):
            assert (out / name).read_bytes() == (a.path / name).read_bytes(), (trial, name)
        resumed.append(load_run(out).summary["resumed_at_step"])
    assert sum(s is not None for s in resumed) >= 5  # most trials resumed from a checkpoint
