"""Victims: programs from tests/victims/, built once per session under names of their own, and
the child processes started from them.

Tests write comm-based rules (``comm: bigmem``), and any process on the machine with that comm
is then taken for a target: another test run's victim, a developer's bench. So a victim's
program name, which the kernel makes its comm, carries a tag drawn once per session
(:data:`SESSION_TAG`), and a test names a victim by the path :func:`build_victim` returned
(``exe.name``), never by a literal.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from support.paths import VICTIMS
from support.waiting import MIN_WAIT_S, scaled

__all__ = ["COMM_MAX", "SESSION_TAG", "VICTIMS", "Victim", "ask", "build_victim", "victim_name"]

#: The longest comm the kernel keeps (TASK_COMM_LEN - 1, include/linux/sched.h); a longer
#: program name is cut, and a rule's comm can only match what the kernel kept.
COMM_MAX = 15
#: Drawn once per process: every victim built by this session carries it.
SESSION_TAG = secrets.token_hex(2)

#: The one compiler command line of the suite and bench/; the flags a caller passes come last,
#: so they override these (gcc keeps the last -O and -g level given).
GCC = ("gcc", "-g", "-O0", "-pthread", "-fno-omit-frame-pointer")

_built: dict[tuple[Path, tuple[str, ...]], Path] = {}
_names: dict[str, tuple[Path, tuple[str, ...]]] = {}
_build_dir: Path | None = None


def _source(name: str | Path) -> Path:
    return name if isinstance(name, Path) else VICTIMS / f"{name}.c"


def victim_name(name: str | Path, *flags: str) -> str:
    """The program name of victim ``name`` (tests/victims/NAME.c, or a source path) built with
    ``flags`` in this session: the name cut to fit, then ``-`` and a tag (a digest of the flags
    when there are any, and :data:`SESSION_TAG`), at most :data:`COMM_MAX` bytes, so that the
    kernel keeps it whole as the comm."""
    stem = _source(name).stem
    tag = SESSION_TAG
    if flags:
        tag = hashlib.sha256("\0".join(flags).encode()).hexdigest()[:2] + tag
    return f"{stem[: COMM_MAX - 1 - len(tag)]}-{tag}"


def build_dir() -> Path:
    """This session's directory of victims: our own, not under /tmp/pytest-of-USER (which other
    pytest runs on the machine prune), and traversable by the unprivileged users some tests
    run victims as."""
    global _build_dir
    if _build_dir is None:
        _build_dir = Path(tempfile.mkdtemp(prefix=f"snapd-victims-{SESSION_TAG}-", dir="/tmp"))
        _build_dir.chmod(0o755)
        atexit.register(remove_build_dir)
    return _build_dir


def remove_build_dir() -> None:
    global _build_dir
    if _build_dir is not None:
        shutil.rmtree(_build_dir, ignore_errors=True)
        _build_dir = None
        _built.clear()
        _names.clear()


def build_victim(name: str | Path, *flags: str, out: Path | None = None) -> Path:
    """Compile victim ``name`` (tests/victims/NAME.c, or a source path) with :data:`GCC` and
    ``flags``; return the program.

    Without ``out`` it is built once per session, into :func:`build_dir` under
    :func:`victim_name`. With ``out`` it is built there, every time: for a test that renames,
    replaces or rebuilds the file (name it ``victim_name(...)`` unless the test needs another)."""
    src = _source(name)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*GCC, "-o", str(out), str(src), *flags], check=True)
        return out
    key = (src, flags)
    if key not in _built:
        exe_name = victim_name(src, *flags)
        other = _names.setdefault(exe_name, key)
        if other != key:
            raise AssertionError(f"victims {other} and {key} would share the name {exe_name}: rename one")
        exe = build_dir() / exe_name
        subprocess.run([*GCC, "-o", str(exe), str(src), *flags], check=True)
        _built[key] = exe
    return _built[key]


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
        self.proc.wait(timeout=scaled(10))
        for f in (self.proc.stdout, self.proc.stdin):
            if f:
                f.close()


def ask(v: Victim, command: str, timeout: float = 30.0) -> str:
    """One command line to a victim that answers each with a line 'ok ...' (as
    tests/victims/diff_victim.c does); returns the answer after 'ok'."""
    v.write(command.encode() + b"\n")
    assert v.proc.stdout is not None
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(v.proc.stdout, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"victim {v.pid}: no answer to {command!r} after {timeout}s")
            chunk = os.read(v.proc.stdout.fileno(), 1)
            if not chunk:
                raise AssertionError(f"victim {v.pid} exited on {command!r}")
            buf += chunk
    line = buf.decode().strip()
    assert line.startswith("ok"), line
    return line[2:].strip()
