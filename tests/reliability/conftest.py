"""Reliability fixtures: the daemon harness of tests/daemon, imported (not copied) so that the
reliability tests drive the daemon exactly as its own end-to-end tests do."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/daemon has no __init__.py: its helpers are imported by module name, as its own tests do.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

# Every fixture of tests/daemon/conftest.py (daemon, victims and what they depend on), whatever
# that file names them: it is another engineer's and still changing.
from tests.daemon.conftest import *  # noqa: F403
