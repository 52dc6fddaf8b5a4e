"""The eval thread (core/background.py): the same bytes as evaluating on the training thread,
in step order, the writers on the training thread, and errors on either reach the run."""

import threading

import pytest

from minitrain.core import background, config
from minitrain.core.rundir import load_run
from minitrain.core.train import train

# a phase-19 model, small, with the arrival inside the run: the dense window, the moments of
# the tracked rows, the token losses and the clip all take part
SHORT = ["train.steps=120", "data.arrive_step=80", "model.n_layer=1", "model.n_embd=32",
         "model.n_head=2", "optimizer.warmup_steps=10", "train.eval_every=10",
         "train.checkpoint_every=50"]
FILES = ("metrics.jsonl", "batches.jsonl", "moments.jsonl", "token_losses.bin",
         "checkpoint.pt", "config.resolved.yaml")


def _train(out, extra=()):
    cfg = config.load("experiments/19-control/config.yaml", [*SHORT, *extra])
    return train(cfg, out, progress=False)


@pytest.mark.parametrize("extra", [(), ("optimizer.grad_clip=null",)])
def test_the_eval_thread_writes_the_training_threads_bytes(tmp_path, extra):
    threaded = _train(tmp_path / "thread", extra)
    inline = _train(tmp_path / "inline", (*extra, "train.log_thread=false"))
    for name in FILES:
        a, b = (tmp_path / d / name for d in ("thread", "inline"))
        if name == "config.resolved.yaml":  # the one key they differ in
            a, b = (p.read_text().replace("log_thread: false", "log_thread: true") for p in (a, b))
            assert a == b
        else:
            assert a.read_bytes() == b.read_bytes(), name
    run = load_run(tmp_path / "thread")
    evaluated = [m["step"] for m in run.metrics if m["train_loss"] is not None]
    assert set(range(80, 120)) <= set(evaluated)  # the dense window from the arrival
    for key in ("final_train_loss", "final_val_loss", "final_loss"):
        assert threaded[key] == inline[key] and threaded[key] is not None


def test_a_writers_error_fails_the_run_without_a_gap(tmp_path, monkeypatch):
    """A writer that raises (a full disk, say) at step 30: the run stops with status failed
    and the error, and no log holds a line past the last step all of them wrote."""
    from minitrain.core.observe import BatchLog

    real = BatchLog.on_step

    def disk_full_at_30(self, r):
        if r.step == 30:
            raise OSError(28, "No space left on device")
        real(self, r)

    monkeypatch.setattr(BatchLog, "on_step", disk_full_at_30)
    with pytest.raises(OSError, match="No space"):
        _train(tmp_path / "full")
    run = load_run(tmp_path / "full")
    assert run.summary["status"] == "failed" and "No space left" in run.summary["error"]
    assert run.summary["steps_completed"] == 30  # the steps every log holds, not the loop's
    assert len(run.batches) == 30
    assert len(run.metrics) <= 31 and [m["step"] for m in run.metrics[:30]] == list(range(30))


def test_the_writers_run_on_the_training_thread_and_the_losses_on_the_other(tmp_path,
                                                                          monkeypatch):
    """Python's lock: the writers' work is mostly Python, so it stays on the training thread;
    only the whole-set evaluation (torch ops, which let go of the lock) runs on the worker."""
    from minitrain.core.evaluate import WholeSetLoss
    from minitrain.core.observe import MomentLog

    threads = {"write": set(), "measure": set()}
    write, measure = MomentLog.write, WholeSetLoss.measure

    def spy_write(self, r, c):
        threads["write"].add(threading.current_thread().name)
        write(self, r, c)

    def spy_measure(self, forward=None):
        threads["measure"].add(threading.current_thread().name)
        return measure(self, forward)

    monkeypatch.setattr(MomentLog, "write", spy_write)
    monkeypatch.setattr(WholeSetLoss, "measure", spy_measure)
    _train(tmp_path / "run")
    assert threads == {"write": {threading.main_thread().name}, "measure": {"minitrain-logs"}}


def test_an_error_in_the_evaluation_fails_the_run_without_a_gap(tmp_path, monkeypatch):
    """The eval thread raises at the evaluation of step 40: no log holds step 40 or later."""
    from minitrain.core.evaluate import WholeSetLoss

    measure = WholeSetLoss.measure

    def broken_at_40(self, forward=None):
        if threading.current_thread().name == "minitrain-logs" and \
                len(evaluated) == 4:  # steps 0, 10, 20 and 30 went through
            raise RuntimeError("evaluation broke")
        evaluated.append(1)
        return measure(self, forward)

    evaluated: list = []
    monkeypatch.setattr(WholeSetLoss, "measure", broken_at_40)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        _train(tmp_path / "broken")
    run = load_run(tmp_path / "broken")
    assert run.summary["status"] == "failed" and "evaluation broke" in run.summary["error"]
    assert run.summary["steps_completed"] == 40
    assert [m["step"] for m in run.metrics] == list(range(40)) and len(run.batches) == 40


def test_the_worker_runs_jobs_in_order_and_raises_once():
    w, seen = background.Worker(depth=2), []
    for i in range(50):
        w.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    w.drain()
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"minitrain-logs"}

    def boom():
        raise ValueError("boom")
    w.submit(boom)
    w.submit(lambda: seen.append("after"))  # dropped: it would follow a missing job
    with pytest.raises(ValueError):
        w.drain()
    w.close()  # raised once; closing is quiet
    assert seen[-1] != "after"
