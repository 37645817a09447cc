"""Shared fixtures: kernel-test gating, C victims compiled once per session, process cleanup.

Kernel tests (marker ``kernel``) need root: unprivileged they skip with a reason, but with
``SNAPD_REQUIRE_KERNEL=1`` (set by .ci/run) a missing privilege is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

VICTIMS = Path(__file__).parent / "victims"
REQUIRE_KERNEL = os.environ.get("SNAPD_REQUIRE_KERNEL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 or REQUIRE_KERNEL:
        return  # as root they run; with REQUIRE_KERNEL unprivileged, _kernel_gate fails them
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root for ptrace/eBPF (run: sudo make test)"))


@pytest.fixture(autouse=True)
def _kernel_gate(request: pytest.FixtureRequest) -> None:
    if "kernel" in request.keywords and os.geteuid() != 0 and REQUIRE_KERNEL:
        pytest.fail("SNAPD_REQUIRE_KERNEL=1 but not root: kernel tests cannot run")


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``cond`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
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


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("victims")


@pytest.fixture(scope="session")
def compile_victim(build_dir: Path) -> Callable[..., Path]:
    """compile_victim("threads") builds tests/victims/threads.c with -g -O0 -pthread, once."""
    cache: dict[tuple[str, tuple[str, ...]], Path] = {}

    def build(name: str, *extra: str) -> Path:
        key = (name, extra)
        if key not in cache:
            src = VICTIMS / f"{name}.c"
            out = build_dir / (name + ("-" + "-".join(e.strip("-") for e in extra) if extra else ""))
            subprocess.run(
                ["gcc", "-g", "-O0", "-pthread", "-fno-omit-frame-pointer", "-o", str(out), str(src), *extra],
                check=True,
            )
            cache[key] = out
        return cache[key]

    return build


class Victim:
    """A child process that prints 'ready ...' on stdout once it is in a known state."""

    def __init__(self, argv: list[str], ready_timeout: float = 20.0, **kw: object) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.pid: int = self.proc.pid
        self.ready_line = self._read_ready(ready_timeout)

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


@pytest.fixture
def spawn() -> Iterator[Callable[..., Victim]]:
    """spawn([argv...]) starts a Victim; every one is killed (by pid) and reaped at teardown."""
    started: list[Victim] = []

    def start(argv: list[str], **kw: object) -> Victim:
        v = Victim([str(a) for a in argv], **kw)
        started.append(v)
        return v

    yield start
    for v in reversed(started):  # a tracer before its tracee: a traced zombie waits for it
        v.kill()


@pytest.fixture(scope="session")
def snapd_cmd() -> list[str]:
    """The installed console script (falls back to running the package)."""
    exe = shutil.which("snapd", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "snapd"]
