"""Helpers of the report tests (a module with a unique name; see tests/snapd_testlib.py)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from snapd.core import write_core

GDB_FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?([A-Za-z_][\w.]*) ")
GDB_THREAD = re.compile(r"^Thread \d+ \(.*LWP (\d+)\)")


def dump(pid: int, path: Path, **kw: Any) -> Path:
    write_core(pid, str(path), **kw)
    return path


def gdb_backtraces(exe: object, core: object) -> dict[int, list[str]]:
    """tid -> function names, as ``gdb -batch -ex 'thread apply all bt'`` prints them."""
    argv = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off", "-ex", "thread apply all bt"]
    out = subprocess.run([*argv, str(exe), str(core)], capture_output=True, text=True, timeout=120).stdout
    traces: dict[int, list[str]] = {}
    tid = None
    for line in out.splitlines():
        m = GDB_THREAD.match(line)
        if m:
            tid = int(m.group(1))
            traces[tid] = []
            continue
        m = GDB_FRAME.match(line)
        if m and tid is not None:
            traces[tid].append(m.group(1))
    return traces


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


def functions(thread: dict[str, Any]) -> list[str]:
    return [f["function"] for f in thread["frames"] if f["function"]]


def thread_of(report: dict[str, Any], tid: int) -> dict[str, Any]:
    return next(t for t in report["threads"] if t["tid"] == tid)


def in_syscall(pid: int, tid: int, nr: int) -> bool:
    try:
        return Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0] == str(nr)
    except (OSError, IndexError):
        return False
