"""gdb as the judge of a core: batch runs, backtraces parsed per thread."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from support.waiting import scaled

#: gdb arguments for a quiet, reproducible batch run (no ~/.gdbinit, no debuginfod downloads)
GDB_QUIET = ["-nx", "-batch", "-iex", "set debuginfod enabled off"]

GDB_FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?([A-Za-z_][\w.]*) ")
GDB_THREAD = re.compile(r"^Thread \d+ \(.*LWP (\d+)\)")


def gdb(exe: object, core: object, *cmds: str) -> str:
    """stdout + stderr of ``gdb -batch`` running ``cmds`` on ``exe`` and ``core``."""
    argv = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off"]
    for c in cmds:
        argv += ["-ex", c]
    r = subprocess.run([*argv, str(exe), str(core)], capture_output=True, text=True, timeout=scaled(120))
    return r.stdout + r.stderr


def gdb_bt(exe: Path | str, core: str) -> str:
    r = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "bt", str(exe), core],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    return r.stdout + r.stderr


def gdb_backtraces(exe: object, core: object) -> dict[int, list[str]]:
    """tid -> function names, as ``gdb -batch -ex 'thread apply all bt'`` prints them."""
    argv = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off", "-ex", "thread apply all bt"]
    run = subprocess.run([*argv, str(exe), str(core)], capture_output=True, text=True, timeout=scaled(120))
    out = run.stdout
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
