"""What /proc says about a process, for tests: states, tracers, usage, children, syscalls.

The one /proc reader of the suite, built on snapd's own (:mod:`snapd.procfs`: its parsers, and
its one OSError boundary, so a process that is gone is :class:`~snapd.errors.TargetGone`
here too); what snapd has no reader for (a thread's syscall, children, fds) is read here
with its helpers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapd import procfs
from snapd.errors import TargetError, TargetGone
from snapd.procfs import CLK_TCK
from snapd.procfs.context import capture

__all__ = [
    "CLK_TCK",
    "Usage",
    "child_states",
    "children_of",
    "context_of",
    "halted_why",
    "in_syscall",
    "pids_of_exe",
    "proc_state",
    "syscall_nr",
    "thread_states",
    "tracer_of",
    "vm_kib",
]


def proc_state(pid: int) -> str:
    """The process's state letter (proc(5): R, S, D, T, t, Z, ...)."""
    return procfs.stat(pid).state


def thread_states(pid: int) -> dict[int, str]:
    """tid -> state letter of every thread (one that ends while read is left out)."""
    out = {}
    for tid in procfs.tids(pid):
        try:
            out[tid] = procfs.stat(pid, tid).state
        except TargetGone:
            continue
    return out


def tracer_of(pid: int) -> int:
    """The pid tracing ``pid`` (TracerPid in /proc/PID/status), 0 for none."""
    return int(procfs.status(pid)["TracerPid"])


def halted_why(pid: int) -> str | None:
    """Why ``pid`` counts as halted (a thread in T/t, or a tracer attached), or None if it runs.

    A process that has exited is not halted."""
    try:
        tracer = tracer_of(pid)
        tids = procfs.tids(pid)
    except TargetGone:
        return None
    if tracer != 0:
        return f"traced by {tracer}"
    for tid in tids:
        try:
            state = procfs.stat(pid, tid).state
        except TargetGone:
            continue
        if state in ("T", "t"):
            return f"thread {tid} in state {state}"
        if state == "Z" and tid == pid:
            return None
    return None


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    """A ``Vm*`` field of /proc/PID/status, in KiB."""
    status = procfs.status(pid)
    if field not in status:
        raise AssertionError(f"no {field} for pid {pid}")
    return int(status[field].split()[0])


@dataclass
class Usage:
    """What /proc says about a process: CPU seconds, RSS, open fds, threads."""

    cpu: float  # utime + stime, seconds
    rss_kib: int
    fds: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        st = procfs.stat(pid)
        status = procfs.status(pid)
        return cls(
            cpu=(st.utime + st.stime) / CLK_TCK,
            rss_kib=int(status["VmRSS"].split()[0]),
            fds=len(procfs.proc_call(pid, lambda: os.listdir(f"/proc/{pid}/fd"))),
            threads=int(status["Threads"]),
        )


def context_of(pid: int) -> dict[str, Any]:
    """The /proc context the daemon stores beside a core (snapd.procfs.context.capture), as a
    report is given it."""
    return capture(pid)


def in_syscall(pid: int, tid: int, nr: int) -> bool:
    """Whether thread ``tid`` is blocked in system call ``nr`` (/proc/PID/task/TID/syscall)."""
    try:
        return procfs.read_bytes(f"/proc/{pid}/task/{tid}/syscall").split()[0] == str(nr).encode()
    except (OSError, IndexError):
        return False


def syscall_nr(pid: int) -> int:
    """The system call the process's main thread is in (-1: none; proc(5) /proc/PID/syscall)."""
    return int(procfs.proc_call(pid, lambda: procfs.read_bytes(f"/proc/{pid}/syscall")).split()[0])


def children_of(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (/proc/PID/task/TID/children)."""
    out: list[int] = []
    for tid in procfs.tids(pid):
        try:
            out += [int(c) for c in procfs.read_bytes(f"/proc/{pid}/task/{tid}/children").split()]
        except FileNotFoundError:
            continue
    return out


def child_states(pid: int) -> dict[int, str]:
    """child pid -> state letter of every process whose parent is ``pid`` (a scan of /proc,
    which also finds the zombies and stopped children that nobody waits for)."""
    out = {}
    for p in procfs.iter_pids():
        try:
            st = procfs.stat(p)
        except TargetError:
            continue
        if st.ppid == pid:
            out[p] = st.state
    return out


def pids_of_exe(exe: Path | str) -> list[int]:
    """Pids whose executable is ``exe`` (procfs.exe: "" for those we cannot read)."""
    return [p for p in procfs.iter_pids() if procfs.exe(p) == str(exe)]
