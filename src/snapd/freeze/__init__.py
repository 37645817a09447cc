"""Freezing a live process: every thread halted with ptrace, invisibly to its parent."""

from snapd.freeze.halted import FreezeTimeout, Halted, Thread, halt, precheck

__all__ = ["FreezeTimeout", "Halted", "Thread", "halt", "precheck"]
