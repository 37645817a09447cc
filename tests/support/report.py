"""Reports in tests: a core taken for one, the stack a probe records at the event, and the frames
a report holds."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from snapd.core import write_core
from snapd.freeze import halt
from snapd.procfs import maps
from snapd.report import MAX_EVENT_STACK, EventStack
from snapd.sys import ptrace as pt
from snapd.sys.uio import process_vm_readv


def dump(pid: int, path: Path, **kw: Any) -> Path:
    write_core(pid, str(path), **kw)
    return path


def functions(thread: dict[str, Any]) -> list[str]:
    return [f["function"] for f in thread["frames"] if f["function"]]


def thread_of(report: dict[str, Any], tid: int) -> dict[str, Any]:
    return next(t for t in report["threads"] if t["tid"] == tid)


def record_event(pid: int, tid: int) -> EventStack:
    """What the probe will record: user registers and up to 16 KiB of stack from sp."""
    with halt(pid) as h:
        assert tid in h.tids
        regs = pt.get_regs(tid)
        sp = int.from_bytes(regs[19 * 8 : 20 * 8], "little")
        end = next(m.end for m in maps(pid) if m.start <= sp < m.end)
        size = min(MAX_EVENT_STACK, end - sp)
        buf = ctypes.create_string_buffer(size)
        assert process_vm_readv(pid, [(ctypes.addressof(buf), sp, size)]) == size
    return EventStack(tid=tid, regs=regs, stack=buf.raw)
