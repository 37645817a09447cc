"""Deprecated: moved to support.standin and support.waiting; import from there. This re-export
keeps tests written against the old name working until the lead removes it (a child process
that imports it by path finds the support package beside it)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

from support.standin import write_like_core_writer  # noqa: E402
from support.waiting import wait_for  # noqa: E402

__all__ = ["wait_for", "write_like_core_writer"]
