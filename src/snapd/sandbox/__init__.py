"""Bounded, confined subprocesses for work on hostile input (a core's memory, two cores to diff).

    from snapd.sandbox import Limits, run_bounded, Failure
    res = run_bounded("snapd.report.build", {"core_fd": fd, ...}, Limits(deadline=30), fds=[fd])
    if isinstance(res, Failure): print(res.why)       # never raises, never waits past the deadline
    else: use(res.value)

The job runs in a fresh interpreter (``python -m snapd.sandbox.child``), never a fork of the
caller (which may hold threads, locks and a large heap): its module's ``sandboxed(args)`` gets
the JSON ``args`` and returns a JSON-able value. The child confines itself before it reads any
input (:mod:`snapd.sandbox.confine`); the parent enforces the wall-clock deadline and the output
cap, and kills the child's whole process group on either. For a caller with an event loop,
:class:`BoundedRun` exposes the pipes (``fileno()``) and ``step()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snapd.sandbox.limits import SYSTEM_READ, Limits, code_paths

__all__ = ["SYSTEM_READ", "BoundedRun", "Failure", "Limits", "Result", "code_paths", "run_bounded"]


@dataclass(frozen=True)
class Result:
    value: Any
    elapsed: float
    max_rss: int  # bytes, the child's peak resident set (wait4 rusage)
    sandbox: str  # what confinement the child applied


@dataclass(frozen=True)
class Failure:
    why: str  # one line
    elapsed: float
    max_rss: int = 0
    timed_out: bool = False  # killed at the wall-clock deadline


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _env() -> dict[str, str]:
    """The child's environment: nothing of the caller's but what the job needs."""
    keep = (
        "PATH",
        "PYTHONPATH",
        "SNAPD_DEBUG",
        "DEBUGINFOD_URLS",
        "DEBUGINFOD_CACHE_PATH",
        "DEBUGINFOD_TIMEOUT",
    )
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    env["HOME"] = "/nonexistent"
    return env


class BoundedRun:
    """One child; ``step(timeout)`` until it returns a Result or a Failure."""

    def __init__(
        self,
        module: str,
        args: Any,
        limits: Limits,
        fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        reads: Sequence[str] = (),
        defer: bool = False,
    ) -> None:
        """``reads``: more paths the job may read (besides ``limits.read_paths``). ``defer``:
        start the child now (its interpreter and the job's imports) and send the arguments
        later with :meth:`send`; the deadline runs from now."""
        self.limits = limits
        self.started = time.monotonic()
        self.deadline = self.started + limits.deadline
        self._result = bytearray()
        self._log = bytearray()
        self._outcome: Result | Failure | None = None
        self._timed_out = False
        r, w = os.pipe2(os.O_CLOEXEC)
        spec = json.dumps({"limits": limits.to_dict()}).encode() + b"\n"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-s", "-m", "snapd.sandbox.child", module, str(os.getpid()), str(w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(w, *fds),
                start_new_session=True,  # its own process group, killed as one
                cwd="/",
                env={**_env(), **(env or {})},
            )
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self._rfd = r
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._infd = os.dup(self.proc.stdin.fileno())
        self.proc.stdin.close()
        os.set_blocking(self._infd, False)
        self._pending = bytearray()
        self._sent = False
        self._logfd = self.proc.stdout.fileno()
        os.set_blocking(r, False)
        os.set_blocking(self._logfd, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(r, selectors.EVENT_READ, "result")
        self._sel.register(self._logfd, selectors.EVENT_READ, "log")
        self._write(spec)
        if not defer:
            self.send(args, reads)

    def _write(self, data: bytes = b"") -> None:
        """Queue ``data`` for the child's stdin and write what the pipe takes now (never
        blocks: the rest goes out from :meth:`step`, as the child reads)."""
        self._pending += data
        if self._infd < 0:
            self._pending.clear()
            return
        try:
            while self._pending:
                n = os.write(self._infd, self._pending)
                del self._pending[:n]
        except BlockingIOError:
            pass
        except BrokenPipeError:  # the child is gone: step() reports why
            self._pending.clear()
        if not self._pending and self._sent and self._infd >= 0:
            self._sel_unregister(self._infd)
            os.close(self._infd)
            self._infd = -1
        elif self._pending and self._infd not in self._sel.get_map():
            self._sel.register(self._infd, selectors.EVENT_WRITE, "stdin")

    def _sel_unregister(self, fd: int) -> None:
        if fd in self._sel.get_map():
            self._sel.unregister(fd)

    def send(self, args: Any, reads: Sequence[str] = ()) -> None:
        """The job's arguments, and extra paths it may read (once; then the child's stdin is
        closed)."""
        if self._sent:
            return
        self._sent = True
        self._write(json.dumps({"args": args, "reads": list(reads)}).encode() + b"\n")

    def fileno(self) -> int:
        """The result pipe: readable when the child answers or dies."""
        return self._rfd

    def step(self, timeout: float | None = None) -> Result | Failure | None:
        """Read what is there (waiting up to ``timeout``, never past the deadline)."""
        if self._outcome is not None:
            return self._outcome
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                self._timed_out = True
                return self._finish(f"timed out after {self.limits.deadline:g} s (killed)", kill=True)
            wait = self.deadline - now if timeout is None else min(timeout, self.deadline - now)
            events = self._sel.select(max(wait, 0.0)) if self._sel.get_map() else []
            for key, _ in events:
                fd = int(key.fd)
                if key.data == "stdin":
                    self._write()
                    continue
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    self._sel.unregister(fd)
                    continue
                if key.data == "result":
                    self._result += chunk
                    if len(self._result) > self.limits.output_bytes:
                        return self._finish(
                            f"output over {self.limits.output_bytes} bytes (killed)", kill=True
                        )
                else:
                    self._log += chunk
                    del self._log[: max(0, len(self._log) - self.limits.log_bytes)]
            if not any(k.data != "stdin" for k in self._sel.get_map().values()):
                return self._finish(None, kill=False)
            if timeout is not None and not events:
                return None

    def kill(self) -> None:
        """Kill the child's process group now (idempotent)."""
        if self._outcome is None:
            self._finish("cancelled (killed)", kill=True)

    def _finish(self, why: str | None, kill: bool) -> Result | Failure:
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        status, rusage = self._reap()
        elapsed = time.monotonic() - self.started
        rss = rusage.ru_maxrss * 1024 if rusage else 0
        for fd in list(self._sel.get_map()):
            self._sel.unregister(fd)
        self._sel.close()
        if self._infd >= 0:
            os.close(self._infd)
            self._infd = -1
        os.close(self._rfd)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        if why is None:
            why, value, sandbox = self._decode(status)
            if why is None:
                self._outcome = Result(value, elapsed, rss, sandbox)
                return self._outcome
        self._outcome = Failure(why, elapsed, rss, self._timed_out)
        return self._outcome

    def _reap(self) -> tuple[int, resource.struct_rusage | None]:
        """wait4 for the rusage (peak RSS); the child is killed if it lingers past the deadline."""
        while True:
            try:
                pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:
                return 0, None
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
                # Whatever it left in its group (it may not fork, but a library might) goes too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                return status, rusage
            if time.monotonic() >= self.deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            time.sleep(0.002)

    def _decode(self, status: int) -> tuple[str | None, Any, str]:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            what: str = {
                int(signal.SIGXCPU): f"reached its CPU limit of {self.limits.cpu_seconds} s",
                int(signal.SIGKILL): "killed",
                int(signal.SIGXFSZ): "reached its file size limit",
            }.get(sig, f"crashed ({_signame(sig)})")
            return self._with_log(f"the worker {what}"), None, ""
        try:
            out = json.loads(bytes(self._result))
        except ValueError:
            code = os.waitstatus_to_exitcode(status)
            return self._with_log(f"the worker exited ({code}) without an answer"), None, ""
        if not isinstance(out, dict):
            return "the worker's answer is malformed", None, ""
        if "error" in out:
            return " ".join(str(out["error"]).split())[:400], None, ""
        return None, out.get("ok"), str(out.get("sandbox", ""))[:400]

    def _with_log(self, why: str) -> str:
        tail = bytes(self._log).decode("utf-8", "replace").strip().splitlines()
        last = " ".join(tail[-1].split())[:200] if tail else ""
        return f"{why}: {last}" if last else why


def run_bounded(
    module: str, args: Any, limits: Limits | None = None, fds: Sequence[int] = ()
) -> Result | Failure:
    """Run ``module.sandboxed(args)`` confined; a Result, or a Failure saying why. Never raises
    for anything the child does, and returns by ``limits.deadline`` (plus the time to reap)."""
    limits = limits or Limits()
    try:
        run = BoundedRun(module, args, limits, fds)
    except OSError as err:
        return Failure(f"cannot start the worker: {err.strerror or err}", 0.0)
    try:
        while True:
            res = run.step()
            if res is not None:
                return res
    except BaseException:
        run.kill()
        raise
