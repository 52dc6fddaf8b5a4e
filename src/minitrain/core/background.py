"""Where the whole-set losses are evaluated: on a second thread (`Worker`), so that the training
step does not wait for them, or on the training thread itself (`Inline`, the reference the
tests hold the worker to, byte for byte). Either runs the jobs in the order they were given.
The writers themselves run on the training thread (loop.Loop._flush says why)."""

from __future__ import annotations

import os
import queue
import threading

import torch


class Inline:
    """Each job runs at once, on the calling thread."""

    def submit(self, job) -> None:
        job()

    def drain(self) -> None:
        pass

    def close(self, raise_error: bool = True) -> None:
        pass


class Worker:
    """One thread running jobs in order. The training thread waits only when `depth` jobs are
    queued (each holds its step's copies, so the queue bounds the memory) or at `drain`; an
    error in a job stops the worker and is raised on the training thread at the next call."""

    def __init__(self, depth: int = 16):
        self.jobs: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None  # raised once, on the training thread
        self.failed = False  # and every job after it dropped, so no log has a gap
        threads = torch.get_num_threads()  # the training thread's: the same kernels, bits
        self.thread = threading.Thread(target=self._run, args=(threads,), daemon=True,
                                       name="minitrain-logs")
        self.thread.start()

    def _run(self, threads: int) -> None:
        torch.set_num_threads(threads)
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                if not self.failed:
                    job()
            except BaseException as e:  # noqa: BLE001 - raised again on the training thread
                self.error, self.failed = e, True
            finally:
                self.jobs.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def submit(self, job) -> None:
        self._raise()
        self.jobs.put(job)

    def drain(self) -> None:
        """Wait until every job given so far has run."""
        self.jobs.join()
        self._raise()

    def close(self, raise_error: bool = True) -> None:
        """Run what is queued, then stop the thread; an error from the queue is raised."""
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()
        if raise_error:
            self._raise()


def wanted(train_cfg, device_type: str = "cpu") -> bool:
    """Whether a run evaluates on a second thread: asked for (`train.log_thread`), a forward pass
    that is not compiled (a compiled one is evaluated where it was compiled), and on the CPU a
    core left for the thread (fewer intra-op threads than the cores the process may use: a
    thread sharing a busy core makes the step wait for Python's lock)."""
    t = train_cfg
    if not t.log_thread or t.compile:
        return False
    if device_type != "cpu":
        return True
    return (t.threads or torch.get_num_threads()) < len(os.sched_getaffinity(0))


def build(enabled: bool):
    return Worker() if enabled else Inline()
