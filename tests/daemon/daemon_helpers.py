"""Deprecated: moved to support.daemon (the harness), support.proc (halted_why) and support.gdb
(gdb_bt); import them from there. This re-export keeps tests written against the old name
working until the lead removes it."""

from __future__ import annotations

from support.daemon import READY_TIMEOUT, DaemonHarness, DVictim, Victims, clock_rule, syscall_rule
from support.gdb import gdb_bt
from support.proc import halted_why

__all__ = [
    "READY_TIMEOUT",
    "DVictim",
    "DaemonHarness",
    "Victims",
    "clock_rule",
    "gdb_bt",
    "halted_why",
    "syscall_rule",
]
