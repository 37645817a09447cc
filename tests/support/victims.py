"""Victims: child processes in a known state, started from tests/victims/."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time

from support.paths import VICTIMS
from support.waiting import MIN_WAIT_S, scaled

__all__ = ["VICTIMS", "Victim"]


class Victim:
    """A child process that prints 'ready ...' on stdout once it is in a known state."""

    def __init__(self, argv: list[str], ready_timeout: float = MIN_WAIT_S, **kw: object) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.pid: int = self.proc.pid
        self.ready_line = self._read_ready(scaled(ready_timeout))

    def _read_ready(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                self.kill()
                raise AssertionError(f"victim {self.pid} not ready after {timeout}s: {buf!r}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"victim {self.pid} exited before ready: {buf!r}")
            buf += chunk
        line = buf.split(b"\n")[0].decode()
        assert line.startswith("ready"), line
        return line

    def alive(self) -> bool:
        return self.proc.poll() is None

    def write(self, data: bytes) -> None:
        """Send ``data`` to the victim's stdin; a victim that died says how, not EPIPE."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"victim {self.pid} is gone ({self.exit_status()})") from None

    def exit_status(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return "still running, stdin closed"
        return f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for f in (self.proc.stdout, self.proc.stdin):
            if f:
                f.close()
