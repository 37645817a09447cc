"""The dump worker: one thread that does every halt and dump.

ptrace is per thread (a tracee belongs to the thread that seized it), so all of a dump's ptrace
requests must come from one thread; a dedicated one also keeps slow dumps away from the main loop,
which goes on taking events. Jobs come in on a queue (first come, first dumped), results go back
on another and the main loop is woken through a pipe.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from snapd.core import CoreInfo, write_core
from snapd.daemon.request import CoreRequest
from snapd.errors import SnapdError
from snapd.freeze import halt

log = logging.getLogger("snapd")


@dataclass
class Job:
    """A reserved catalog entry and the request to fill it."""

    entry_id: int
    path: str  # the entry's final path: the writer links the core there, never replacing
    request: CoreRequest


@dataclass
class Result:
    job: Job
    info: CoreInfo | None
    error: str = ""


class Worker:
    def __init__(self, wake_fd: int) -> None:
        self.wake_fd = wake_fd
        self._cond = threading.Condition()
        self._jobs: collections.deque[Job] = collections.deque()
        self.results: list[Result] = []
        self.busy: Job | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="snapd-dump", daemon=True)
        #: called with the pid once a probe-stopped target is ours (halted) or gone: the stop
        #: journal's entry can go
        self.on_stop_cleared: Callable[[int], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def waiting(self) -> int:
        with self._cond:
            return len(self._jobs)

    def drop_queued(self) -> list[Job]:
        """Forget every job not started yet (pause, shutdown); the caller fails their entries."""
        with self._cond:
            jobs = list(self._jobs)
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
                while not self._stop and not self._jobs:
                    self._cond.wait()
                if self._stop:
                    return
                job = self._jobs.popleft()
                self.busy = job
            result = self._dump(job)
            with self._cond:
                self.busy = None
                self.results.append(result)
            with contextlib.suppress(OSError):
                os.write(self.wake_fd, b"r")

    def _dump(self, job: Job) -> Result:
        req = job.request
        try:
            halted = None
            if req.kernel_stopped:
                # Take over the SIGSTOP'd target with ptrace, then lift the job-control stop:
                # its threads stay in our ptrace-stop, and SIGCONT is simply pending until we
                # resume them (kernel/signal.c prepare_signal wakes only TASK_STOPPED tasks).
                try:
                    halted = halt(req.pid)
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(req.pid, signal.SIGCONT)
                    if self.on_stop_cleared:
                        self.on_stop_cleared(req.pid)
            info = write_core(
                req.pid,
                job.path,
                content=req.content,
                snapshot=req.mode,
                replace=False,
                current_tid=req.tid,
                halted=halted,
                sync=True,
            )
            return Result(job, info)
        except SnapdError as err:
            return Result(job, None, str(err))
        except Exception as err:  # never let one bad dump kill the worker
            log.exception("dump of pid %d failed unexpectedly", req.pid)
            return Result(job, None, f"internal error: {err}")
