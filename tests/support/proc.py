"""What /proc says about a process, for tests: states, tracers, usage, threads, syscalls."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_state(pid: int) -> str:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def thread_states(pid: int) -> dict[int, str]:
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            data = Path(f"/proc/{pid}/task/{t}/stat").read_bytes()
        except FileNotFoundError:
            continue
        out[int(t)] = data[data.rindex(b")") + 2 :].split()[0].decode()
    return out


def halted_why(pid: int) -> str | None:
    """Why ``pid`` counts as halted (a thread in T/t, or a tracer attached), or None if it runs.

    A process that has exited is not halted."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("TracerPid:") and int(line.split()[1]) != 0:
            return f"traced by {line.split()[1]}"
    for tid in tids:
        try:
            data = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
        except FileNotFoundError:
            continue
        state = data[data.rindex(b")") + 2 :].split()[0].decode()
        if state in ("T", "t"):
            return f"thread {tid} in state {state}"
        if state == "Z" and tid == str(pid):
            return None
    return None


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


@dataclass
class Usage:
    """What /proc says about a process: CPU seconds, RSS, open fds, threads."""

    cpu: float  # utime + stime, seconds
    rss_kib: int
    fds: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (proc(5) fields 14, 15)
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        return cls(
            cpu=cpu,
            rss_kib=int(status["VmRSS"].split()[0]),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            threads=int(status["Threads"]),
        )


def context_of(pid: int) -> dict[str, Any]:
    """The part of a /proc context the report uses (store/context.py captures the same)."""
    threads = []
    for t in sorted(int(x) for x in os.listdir(f"/proc/{pid}/task")):
        data = Path(f"/proc/{pid}/task/{t}/stat").read_bytes()
        comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode()
        state = data[data.rindex(b")") + 2 :].split()[0].decode()
        threads.append({"tid": t, "comm": comm, "state": state})
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {"pid": pid, "threads": threads, "maps": maps}


def in_syscall(pid: int, tid: int, nr: int) -> bool:
    try:
        return Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0] == str(nr)
    except (OSError, IndexError):
        return False
