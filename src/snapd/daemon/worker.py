"""The dump worker: one thread that does every halt and dump.

ptrace is per thread (a tracee belongs to the thread that seized it), so all of a dump's ptrace
requests must come from one thread; a dedicated one also keeps slow dumps away from the main loop,
which goes on taking events. Jobs come in on a queue, results go back on another and the main
loop is woken through a pipe.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from snapd.core import CoreInfo, write_core
from snapd.errors import SnapdError
from snapd.freeze import halt

log = logging.getLogger("snapd")


@dataclass
class Job:
    entry_id: int
    path: str
    pid: int
    tid: int | None
    content: str
    snapshot: str
    rule: str
    kernel_stopped: bool = False  # the probe sent SIGSTOP: halt, then SIGCONT
    not_before: float = 0.0  # time.monotonic(): repeat cores wait for their interval
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    job: Job
    info: CoreInfo | None
    error: str = ""


class Worker:
    def __init__(self, wake_fd: int) -> None:
        self.wake_fd = wake_fd
        self._cond = threading.Condition()
        self._jobs: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self.results: list[Result] = []
        self.busy: Job | None = None
        self.paused = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="snapd-dump", daemon=True)
        self.on_stop_cleared: Any = None  # callable(pid): the journal entry can go

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            heapq.heappush(self._jobs, (job.not_before, next(self._seq), job))
            self._cond.notify()

    def waiting(self) -> int:
        with self._cond:
            return len(self._jobs)

    def drop_queued(self) -> list[Job]:
        """Forget every job not started yet (pause, shutdown); the caller fails their entries."""
        with self._cond:
            jobs = [j for _, _, j in self._jobs]
            self._jobs.clear()
            return jobs

    def take_results(self) -> list[Result]:
        with self._cond:
            out, self.results = self.results, []
            return out

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._jobs or self._jobs[0][0] > time.monotonic()):
                    wait = self._jobs[0][0] - time.monotonic() if self._jobs else None
                    self._cond.wait(wait)
                if self._stop:
                    return
                job = heapq.heappop(self._jobs)[2]
                self.busy = job
            result = self._dump(job)
            with self._cond:
                self.busy = None
                self.results.append(result)
            with contextlib.suppress(OSError):
                os.write(self.wake_fd, b"r")

    def _dump(self, job: Job) -> Result:
        try:
            halted = None
            if job.kernel_stopped:
                # Take over the SIGSTOP'd target with ptrace, then lift the job-control stop:
                # its threads stay in our ptrace-stop, and SIGCONT is simply pending until we
                # resume them (kernel/signal.c prepare_signal wakes only TASK_STOPPED tasks).
                try:
                    halted = halt(job.pid)
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(job.pid, signal.SIGCONT)
                    if self.on_stop_cleared:
                        self.on_stop_cleared(job.pid)
            info = write_core(
                job.pid,
                job.path,
                content=job.content,
                snapshot=job.snapshot,
                replace=False,
                current_tid=job.tid,
                halted=halted,
                sync=True,
            )
            return Result(job, info)
        except SnapdError as err:
            return Result(job, None, str(err))
        except Exception as err:  # never let one bad dump kill the worker
            log.exception("dump of pid %d failed unexpectedly", job.pid)
            return Result(job, None, f"internal error: {err}")
