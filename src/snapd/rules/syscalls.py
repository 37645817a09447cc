"""The running kernel's syscalls: which have tracepoints, their numbers and argument counts.

Names are checked against tracefs (``events/syscalls/sys_enter_NAME``, see
kernel/trace/trace_syscalls.c); argument counts come from each tracepoint's ``format``. Numbers,
which the BPF program keys on, come from the C library's ``asm/unistd_64.h``: the kernel exports
no name -> number table of its own.
"""

from __future__ import annotations

import functools
import glob
import os
import re

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_NR_HEADERS = (
    "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "/usr/include/asm/unistd_64.h",
    "/usr/include/aarch64-linux-gnu/asm/unistd.h",
    "/usr/include/asm-generic/unistd.h",
)
NAME_RE = re.compile(r"[a-z0-9_]{1,64}")


@functools.lru_cache(maxsize=1)
def events_dir() -> str | None:
    """The readable tracefs syscalls directory, or None (e.g. unprivileged: tracefs is 0700)."""
    for root in TRACEFS:
        d = os.path.join(root, "events", "syscalls")
        try:
            if any(n.startswith("sys_enter_") for n in os.listdir(d)):
                return d
        except OSError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def traced_names() -> frozenset[str] | None:
    """Syscalls with tracepoints on this kernel, or None when tracefs cannot be read."""
    d = events_dir()
    if d is None:
        return None
    return frozenset(n[len("sys_enter_") :] for n in os.listdir(d) if n.startswith("sys_enter_"))


@functools.lru_cache(maxsize=512)
def arity(name: str) -> int | None:
    """Number of arguments from the sys_enter format (None when unknown)."""
    d = events_dir()
    if d is None:
        return None
    try:
        with open(os.path.join(d, f"sys_enter_{name}", "format")) as f:
            text = f.read()
    except OSError:
        return None
    fields = re.findall(r"field:[^;]*?(\w+);\s*offset:(\d+);", text)
    return sum(1 for _, off in fields if int(off) >= 16)


@functools.lru_cache(maxsize=1)
def numbers() -> dict[str, int]:
    """name -> syscall number for this architecture (from the installed uapi headers)."""
    out: dict[str, int] = {}
    for path in _NR_HEADERS + tuple(glob.glob("/usr/include/*/asm/unistd_64.h")):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for name, nr in re.findall(r"#define\s+__NR_(\w+)\s+(\d+)\b", text):
            out.setdefault(name, int(nr))
        if out:
            break
    return out


def names_by_number() -> dict[int, str]:
    return {nr: name for name, nr in numbers().items()}
