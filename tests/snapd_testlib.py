"""Helpers shared by the test packages, in a module with a unique name.

(Tests must not ``from conftest import ...``: there are several conftest.py files, and which one
that name resolves to depends on which directories a run collects.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from snapd.core.info import CoreInfo

#: Every deadline of the shared helpers is multiplied by this. The kernel lane (make test-kernels,
#: tests/kernels/lane.py) sets it for a run inside an emulated guest, where everything takes many
#: times longer; deadlines are never edited per test for that.
TIMEOUT_SCALE = max(1.0, float(os.environ.get("SNAPD_TEST_TIMEOUT_SCALE") or 1))


def scaled(seconds: float) -> float:
    """A deadline of ``seconds`` on this machine, as the lane's scale stretches it."""
    return seconds * TIMEOUT_SCALE


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``cond`` until it returns a truthy value; fail with ``what`` after ``timeout`` (scaled)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def proc_state(pid: int) -> str:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def thread_states(pid: int) -> dict[int, str]:
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            data = Path(f"/proc/{pid}/task/{t}/stat").read_bytes()
        except FileNotFoundError:
            continue
        out[int(t)] = data[data.rindex(b")") + 2 :].split()[0].decode()
    return out


class Victim:
    """A child process that prints 'ready ...' on stdout once it is in a known state."""

    def __init__(self, argv: list[str], ready_timeout: float = 20.0, **kw: object) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.pid: int = self.proc.pid
        self.ready_line = self._read_ready(scaled(ready_timeout))

    def _read_ready(self, timeout: float) -> str:
        import selectors

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

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for f in (self.proc.stdout, self.proc.stdin):
            if f:
                f.close()


def write_like_core_writer(path: str, data: bytes = b"\x7fELF" + b"\0" * 4092, pid: int = 1) -> CoreInfo:
    """A stand-in for snapd.core.write_core that follows its publishing contract (temp file in
    the same directory, linked into place, never replacing), for catalog and ctl tests."""

    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".snapd-partial.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces: FileExistsError if anything holds the name
    finally:
        os.unlink(tmp)
    st = os.stat(path, follow_symlinks=False)
    return CoreInfo(
        pid=pid,
        path=path,
        comm="victim",
        exe="/usr/bin/victim",
        threads=2,
        mappings=10,
        dumped_mappings=8,
        apparent_size=st.st_size,
        disk_bytes=st.st_blocks * 512,
        memory_bytes=len(data),
        content="default",
        snapshot="frozen",
        started=0.0,
        freeze_seconds=0.002,
        elapsed_seconds=0.05,
    )
