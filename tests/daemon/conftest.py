"""Daemon fixtures: the real `snapd daemon` as a subprocess on temp dirs, driven only through
rule files, victims and `snapd ctl`.

Teardown order matters: ``daemon`` depends on ``victims`` which depends on ``spawn``, so at the
end of a test the daemon is stopped first (SIGTERM, then SIGKILL if it hangs), then every victim
is checked not to have been left halted, then ``spawn`` kills the victims by pid.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import DaemonHarness, Victims, halted_why
from tests.conftest import Victim, wait_for


@pytest.fixture
def victims(spawn: Callable[..., Victim], compile_victim: Callable[..., Path]) -> Iterator[Victims]:
    vs = Victims(spawn, compile_victim)
    yield vs
    # The daemon is gone by now (its fixture tore down first): nothing may still hold a victim.
    for v in vs.started:
        if v.alive():
            why = halted_why(v.pid)
            wait_for(lambda v=v: halted_why(v.pid) is None, 5.0, f"victim {v.pid} to run ({why})")


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # Short: sun_path is 108 bytes, pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="snapd-d-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(
    tmp_path: Path, sock_dir: str, snapd_cmd: list[str], victims: Victims
) -> Iterator[DaemonHarness]:
    """A harness on fresh temp dirs; call ``.start()`` (with extra daemon arguments) to run it."""
    rules = tmp_path / "rules.d"
    rules.mkdir()
    os.chmod(rules, 0o755)
    h = DaemonHarness(snapd_cmd, rules, tmp_path / "state", os.path.join(sock_dir, "ctl.sock"), tmp_path)
    yield h
    rc = h.stop()
    cores = h.state / "cores"
    if cores.is_dir():  # some are GiBs: do not keep them in pytest's last three runs
        for f in cores.iterdir():
            f.unlink()
    log = h.log_text()
    assert "Traceback" not in log, f"the daemon logged a traceback:\n{log}"
    assert rc in (0, None, -9), f"daemon exited {rc}:\n{log}"
