"""Daemon fixtures: the real `snapd daemon` as a subprocess on temp dirs, driven only through
rule files, victims and `snapd ctl`.

Teardown order matters: ``daemon`` depends on ``victims`` which depends on ``spawn``, so at the
end of a test the daemon is stopped first (SIGTERM, then SIGKILL if it hangs), then every victim
is checked not to have been left halted, then ``spawn`` kills the victims by pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import DaemonHarness, Victims, halted_why
from tests.conftest import VICTIMS, Victim, wait_for


@pytest.fixture(scope="session")
def victim_exe() -> Iterator[Path]:
    """tests/victims/daemon_victim.c, built once, in a directory of our own: the shared
    /tmp/pytest-of-root is also used by other pytest runs on this machine."""
    d = Path(tempfile.mkdtemp(prefix="snapd-dv-", dir="/tmp"))
    os.chmod(d, 0o755)
    exe = d / "daemon_victim"
    src = VICTIMS / "daemon_victim.c"
    subprocess.run(
        ["gcc", "-g", "-O0", "-pthread", "-fno-omit-frame-pointer", "-o", str(exe), str(src)], check=True
    )
    yield exe
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def victims(spawn: Callable[..., Victim], victim_exe: Path) -> Iterator[Victims]:
    vs = Victims(spawn, victim_exe)
    yield vs
    # The daemon is gone by now (its fixture tore down first): nothing may still hold a victim.
    for v in vs.started:
        if v.alive():
            why = halted_why(v.pid)
            wait_for(lambda v=v: halted_why(v.pid) is None, 5.0, f"victim {v.pid} to run ({why})")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Our own, short (sun_path is 108 bytes) and not under the shared /tmp/pytest-of-root.
    d = Path(tempfile.mkdtemp(prefix="snapd-dt-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(workdir: Path, snapd_cmd: list[str], victims: Victims) -> Iterator[DaemonHarness]:
    """A harness on fresh temp dirs; call ``.start()`` (with extra daemon arguments) to run it."""
    rules = workdir / "rules.d"
    rules.mkdir()
    os.chmod(rules, 0o755)
    h = DaemonHarness(snapd_cmd, rules, workdir / "state", str(workdir / "ctl.sock"), workdir)
    yield h
    rc = h.stop()
    log = h.log_text()
    print(f"daemon log:\n{log}")  # shown by pytest for a failing test
    assert "Traceback" not in log, f"the daemon logged a traceback:\n{log}"
    assert rc in (0, None, -9), f"daemon exited {rc}:\n{log}"
