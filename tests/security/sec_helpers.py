"""Helpers and fixtures for tests/security (importable by name, like tests/ctl/ctl_helpers.py).

The helpers of tests/daemon and tests/ctl are imported, not copied: their directories are put
on sys.path here, as pytest does for the tests that live in them. The fixtures are imported by
the test modules that use them (a conftest.py here would be one more module named "conftest",
which `from conftest import ...` in tests/ctl could then pick up by mistake).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
for d in (HERE.parent / "daemon", HERE.parent / "ctl"):
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))

from daemon_helpers import DaemonHarness, DVictim, halted_why  # noqa: E402
from tests.conftest import Victim, wait_for  # noqa: E402

NOBODY = 65534


class Hostile:
    """hostile(comm) starts tests/victims/sec_hostile.c renamed to ``comm`` (a DVictim)."""

    def __init__(self, spawn: Callable[..., Victim], compile_victim: Callable[..., Path]) -> None:
        self.spawn = spawn
        self.compile_victim = compile_victim
        self.started: list[DVictim] = []

    def __call__(self, comm: str, *, exe: Path | None = None, prefix: tuple[str, ...] = ()) -> DVictim:
        exe = exe or self.compile_victim("sec_hostile")
        v = DVictim(self.spawn([*prefix, str(exe), comm]), exe)
        self.started.append(v)
        return v


@pytest.fixture
def hostile(spawn: Callable[..., Victim], compile_victim: Callable[..., Path]) -> Iterator[Hostile]:
    h = Hostile(spawn, compile_victim)
    yield h
    for v in h.started:
        if v.alive():
            wait_for(
                lambda v=v: halted_why(v.pid) is None, 5.0, f"victim {v.pid} to run ({halted_why(v.pid)})"
            )


@pytest.fixture
def sec_daemon(tmp_path: Path, snapd_cmd: list[str], hostile: Hostile) -> Iterator[DaemonHarness]:
    """The real `snapd daemon` (call ``.start()``); stopped, and its log checked for
    tracebacks, before the victims are checked not to be halted and killed."""
    sock_dir = tempfile.mkdtemp(prefix="snapd-s-", dir="/tmp")  # sun_path is 108 bytes
    os.chmod(sock_dir, 0o755)  # the unprivileged users of the ctl tests must reach the socket
    rules = tmp_path / "rules.d"
    rules.mkdir()
    os.chmod(rules, 0o755)
    h = DaemonHarness(snapd_cmd, rules, tmp_path / "state", os.path.join(sock_dir, "ctl.sock"), tmp_path)
    try:
        yield h
        rc = h.stop()
        log = h.log_text()
        assert "Traceback" not in log, f"the daemon logged a traceback:\n{log}"
        assert rc in (0, None, -9), f"daemon exited {rc}:\n{log}"
    finally:
        h.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")
