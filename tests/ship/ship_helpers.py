"""Deprecated: moved to support.ship and support.gdb; import from there. This re-export keeps
tests written against the old name working until the lead removes it."""

from __future__ import annotations

from support.gdb import GDB_QUIET
from support.ship import VICTIM, build

__all__ = ["GDB_QUIET", "VICTIM", "build"]
