"""Kernel-lane fixtures: the daemon harness of tests/daemon, imported as tests/reliability does."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/daemon has no __init__.py: its helpers are imported by module name, as its own tests do.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

from tests.daemon.conftest import *  # noqa: F403
