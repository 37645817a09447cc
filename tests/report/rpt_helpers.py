"""Deprecated: moved to support.report, support.gdb and support.proc; import from there. This
re-export keeps tests written against the old name working until the lead removes it."""

from __future__ import annotations

from support.gdb import GDB_FRAME, GDB_THREAD, gdb_backtraces
from support.proc import context_of, in_syscall
from support.report import dump, functions, thread_of

__all__ = [
    "GDB_FRAME",
    "GDB_THREAD",
    "context_of",
    "dump",
    "functions",
    "gdb_backtraces",
    "in_syscall",
    "thread_of",
]
