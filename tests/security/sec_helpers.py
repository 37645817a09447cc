"""Deprecated: moved to support.hostile, support.daemon and support.proc, and the fixtures to
tests/security/conftest.py (every test here sees them). This re-export keeps tests written
against the old name working until the lead removes it, including the module-level
``hostile = sec_helpers.hostile``: those two fixtures hand on the conftest's, and the old
``from daemon_helpers import ...`` after ``import sec_helpers``: tests/daemon and tests/ctl are
put on sys.path, as this module always did."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.daemon import DaemonHarness, DVictim
from support.hostile import NOBODY, Hostile
from support.proc import halted_why, vm_kib
from support.victims import Victim
from support.waiting import wait_for

for _d in ("daemon", "ctl"):
    _p = str(Path(__file__).resolve().parent.parent / _d)
    if _p not in sys.path:
        sys.path.insert(0, _p)

__all__ = ["NOBODY", "DVictim", "DaemonHarness", "Hostile", "Victim", "halted_why", "vm_kib", "wait_for"]


@pytest.fixture(name="hostile")
def hostile_fixture(hostile: Hostile) -> Hostile:
    return hostile


@pytest.fixture(name="sec_daemon")
def sec_daemon_fixture(sec_daemon: DaemonHarness) -> DaemonHarness:
    return sec_daemon


hostile = hostile_fixture
sec_daemon = sec_daemon_fixture
