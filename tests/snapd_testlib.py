"""Helpers shared by the test packages, in a module with a unique name.

(Tests must not ``from conftest import ...``: there are several conftest.py files, and which one
that name resolves to depends on which directories a run collects.)
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from snapd.core.info import CoreInfo

T = TypeVar("T")

#: Every deadline of the suite is multiplied by this (e.g. 10 inside an emulated VM): a deadline
#: says when to give up, never how fast something must be, so a slow machine only needs a factor.
TIMEOUT_SCALE = max(1.0, float(os.environ.get("SNAPD_TEST_TIMEOUT_SCALE") or 1.0))
#: No condition is given up on sooner than this: on a shared, noisy CI machine with two CPUs a
#: process exiting or a daemon reacting can take seconds, and waiting longer costs a passing
#: test nothing.
MIN_WAIT_S = 30.0


def scaled(seconds: float) -> float:
    """A deadline or bound in seconds, scaled for this machine (see TIMEOUT_SCALE)."""
    return seconds * TIMEOUT_SCALE


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``cond`` until it returns a truthy value; fail with ``what`` after ``timeout``
    (at least MIN_WAIT_S, scaled by TIMEOUT_SCALE)."""
    timeout = scaled(max(timeout, MIN_WAIT_S))
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


def _min_cpu(fn: Callable[[], object], rounds: int) -> float:
    """The least CPU time of ``rounds`` calls, the garbage collector held off: a full collection
    of the test process's heap (hypothesis keeps a lot) costs ~100 ms and says nothing about
    the code measured."""
    best = float("inf")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            c0 = time.process_time()
            fn()
            best = min(best, time.process_time() - c0)
    finally:
        if enabled:
            gc.enable()
    return best


def parse_cpu(fn: Callable[[], T], size: int) -> tuple[T, float, float]:
    """``(fn(), cpu seconds, budget)`` for parsing ``size`` bytes; a run over the budget is
    measured twice more and the least taken (a real blow-up exceeds it every time)."""
    budget = yaml_cpu_budget()(size)
    out: list[T] = []

    def once() -> None:
        out.append(fn())

    cpu = _min_cpu(once, 1)
    if cpu >= budget:
        cpu = min(cpu, _min_cpu(once, 2))
    return out[0], cpu, budget


@functools.cache
def yaml_cpu_budget(factor: float = 2.0, floor_factor: float = 200.0) -> Callable[[int], float]:
    """CPU seconds parsing a rule file of ``size`` bytes may take on this machine.

    At most ``factor`` x what PyYAML itself takes to compose the densest valid YAML of that size
    (a flow sequence of two-letter items), plus ``floor_factor`` x the cost of a small valid
    rule: linear in the size, no blow-up, whatever the machine's speed. Calibrated once per run,
    in CPU time (process_time: immune to other jobs on a shared CI machine)."""
    import yaml

    from snapd.rules import parse_rule
    from snapd.rules.bounds import MAX_FILE_BYTES
    from snapd.rules.compose import _StrictLoader

    dense = "x: [" + ", ".join(["ab"] * (MAX_FILE_BYTES // 4)) + "]\n"
    per_byte = _min_cpu(lambda: yaml.compose(dense, Loader=_StrictLoader), 3) / len(dense)
    small = "name: good\ntarget: {comm: nginx}\ntrigger: {every: 10s}\n"
    floor = _min_cpu(lambda: parse_rule(small, "small.yaml"), 5)
    return lambda size: factor * per_byte * size + floor_factor * floor


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

    def __init__(self, argv: list[str], ready_timeout: float = MIN_WAIT_S, **kw: object) -> None:
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
