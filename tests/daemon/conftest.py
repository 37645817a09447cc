"""Deprecated and empty: the daemon's fixtures (daemon, victims, workdir, victim_exe) are in
tests/conftest.py, where every directory sees them. This module stays for conftest files written
before that do ``from tests.daemon.conftest import *``; the lead removes it."""

from __future__ import annotations

__all__: list[str] = []
