"""Fixtures of the security tests: the rule corpus written out, hostile targets, and the real
daemon on a socket the unprivileged users of these tests can reach."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import rulecorpus
from support.daemon import DaemonHarness
from support.hostile import Hostile
from support.proc import halted_why
from support.victims import Victim
from support.waiting import wait_for


@pytest.fixture(scope="session")
def rule_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole rule corpus (support.rulecorpus: the seeds and what is generated from them) in
    a directory of its own, written once per session."""
    return rulecorpus.write(tmp_path_factory.mktemp("corpus"))


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
