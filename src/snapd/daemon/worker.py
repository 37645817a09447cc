"""The daemon's side of the dumper (:mod:`snapd.daemon.dumper`): the queue of dumps, and the
process that does them.

Jobs wait here, first come, first dumped; one at a time is handed to the dumper over a
socketpair, whose end :meth:`Worker.fileno` the daemon's selector watches. Results are taken on
the loop's thread (:meth:`Worker.on_readable`); nothing here blocks but :meth:`stop`.

The dumper is restarted if it dies (its dump in hand is failed with the reason); the daemon
learns each new pid (``on_started``), since what the dumper traces is never a target.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snapd.core import CoreInfo
from snapd.daemon.request import CoreRequest

log = logging.getLogger("snapd")

LOCK = "dumper.lock"  # in the state dir: held by the daemon and its dumper (inherited)
ORPHAN_WAIT_S = 60.0  # how long a starting daemon waits for a previous daemon's dumper
READY_S = 60.0  # for a new dumper's first word


@dataclass
class Job:
    """A reserved catalog entry and the request to fill it."""

    entry_id: int
    path: str  # the entry's final path: the writer links the core there, never replacing
    request: CoreRequest

    def to_wire(self) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.entry_id,
            "path": self.path,
            "pid": r.pid,
            "tid": r.tid,
            "content": str(r.content),
            "mode": r.mode.value,
            "kernel_stopped": r.kernel_stopped,
        }


@dataclass
class Result:
    job: Job
    info: CoreInfo | None
    error: str = ""


def take_lock(state_dir: str, wait_s: float = ORPHAN_WAIT_S) -> int | None:
    """The state dir's dumper lock (an fd, inherited by the dumper), after waiting up to
    ``wait_s`` for a dumper a killed daemon left to finish its dump. None if it did not."""
    path = os.path.join(state_dir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    end = time.monotonic() + wait_s
    logged = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if logged:
                log.info("the previous dumper finished; going on")
            return fd
        except BlockingIOError:
            pass
        if not logged:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            log.warning(
                "a dumper left by a previous daemon (pid %s) is finishing a dump; waiting up to %.0f s",
                holder,
                wait_s,
            )
            logged = True
        if time.monotonic() > end:
            log.error("the previous dumper is still busy after %.0f s; going on without waiting", wait_s)
            os.close(fd)
            return None
        time.sleep(0.1)


class DumperDied(Exception):
    pass


class Worker:
    def __init__(self, state_dir: str, lock_fd: int | None) -> None:
        self.state_dir = state_dir
        self.lock_fd = lock_fd
        self._jobs: collections.deque[Job] = collections.deque()
        self.results: list[Result] = []
        self.busy: Job | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self._buf = b""
        self.restarts = 0
        self._stopping = False
        #: called with the pid once a probe-stopped target is ours (halted) or gone
        self.on_stop_cleared: Callable[[int], None] | None = None
        #: called with the dumper's pid whenever one starts
        self.on_started: Callable[[int], None] | None = None
        #: called when the socket changes (a restarted dumper): the loop re-registers fileno()
        self.on_socket: Callable[[], None] | None = None

    # -- the process ---------------------------------------------------------------------------

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pass_fds = [theirs.fileno()] + ([self.lock_fd] if self.lock_fd is not None else [])
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # sd_notify is the daemon's alone
        env.pop("WATCHDOG_PID", None)
        env.pop("WATCHDOG_USEC", None)
        argv = [sys.executable, "-m", "snapd.daemon.dumper", "--fd", str(theirs.fileno())]
        argv += ["--state", self.state_dir]
        self.proc = subprocess.Popen(argv, pass_fds=pass_fds, stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.sock = ours
        self._buf = b""
        msg = self._read_one(READY_S)
        if msg is None or "ready" not in msg:
            self._kill()
            raise DumperDied("the dumper process did not start")
        if self.lock_fd is not None:
            os.pwrite(self.lock_fd, f"{self.proc.pid}\n".encode().ljust(32), 0)
        ours.setblocking(False)
        if self.on_started:
            self.on_started(self.proc.pid)
        if self.on_socket:
            self.on_socket()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock else -1

    def _read_one(self, timeout: float) -> dict[str, Any] | None:
        assert self.sock is not None
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = end - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]

    def _kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- the queue -----------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self._jobs.append(job)
        self._next()

    def waiting(self) -> int:
        return len(self._jobs)

    def drop_queued(self) -> list[Job]:
        """Forget every job not started yet (pause, shutdown); the caller fails their entries."""
        jobs = list(self._jobs)
        self._jobs.clear()
        return jobs

    def take_results(self) -> list[Result]:
        out, self.results = self.results, []
        return out

    def _next(self) -> None:
        if self.busy is not None or not self._jobs or self.sock is None:
            return
        job = self._jobs.popleft()
        self.busy = job
        try:
            self.sock.setblocking(True)
            self.sock.sendall(json.dumps({"job": job.to_wire()}).encode() + b"\n")
        except OSError:
            self._died()
        finally:
            if self.sock is not None:
                self.sock.setblocking(False)

    def on_readable(self) -> None:
        """Read what the dumper said (the loop's selector found its socket readable)."""
        if self.sock is None:
            return
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._died()
                return
            self._buf += chunk
        while b"\n" in self._buf:
            line, _, self._buf = self._buf.partition(b"\n")
            try:
                self._message(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                log.error("dumper: unreadable message %r: %s", line[:200], err)
        self._next()

    def _message(self, msg: dict[str, Any]) -> None:
        if "stop_cleared" in msg:
            if self.on_stop_cleared:
                self.on_stop_cleared(int(msg["stop_cleared"]))
        elif "result" in msg:
            r = msg["result"]
            job = self.busy
            if job is None or job.entry_id != r["id"]:
                log.error("dumper: a result for core %s, which it was not dumping", r.get("id"))
                return
            self.busy = None
            info = CoreInfo(**r["info"]) if r.get("info") else None
            self.results.append(Result(job, info, str(r.get("error", ""))))

    def _died(self) -> None:
        status = self.proc.wait(10) if self.proc else None
        why = f"signal {-status}" if status is not None and status < 0 else f"exit status {status}"
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.busy is not None:
            self.results.append(Result(self.busy, None, f"the dumper process died ({why})"))
            self.busy = None
        self.restarts += 1
        if self._stopping:
            return
        log.error("the dumper process died (%s); starting another", why)
        try:
            self.start()
        except (DumperDied, OSError) as err:
            log.error("cannot restart the dumper: %s", err)

    def stop(self, timeout: float = 30.0) -> None:
        """Let the dump in hand finish (bounded), then end the dumper (EOF) and wait for it."""
        end = time.monotonic() + timeout
        self._stopping = True
        self._jobs.clear()
        while self.busy is not None and self.sock is not None and time.monotonic() < end:
            with selectors.DefaultSelector() as sel:
                sel.register(self.sock, selectors.EVENT_READ)
                sel.select(max(0.0, end - time.monotonic()))
            before = self.restarts
            self.on_readable()
            if self.restarts != before:
                break
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        if self.proc is not None:
            try:
                self.proc.wait(max(1.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("the dumper did not exit; killing it")
                self._kill()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
