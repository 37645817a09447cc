"""The target's module files the report worker may read (the caller's side; no core parsing).

They come from the /proc context captured with the core (trusted: read by the daemon from
/proc/PID/maps), or from the core's NT_FILE read by :mod:`snapd.report.mapped` (untrusted:
a forged core may name any path). Either way only regular files that start with the ELF magic
are kept: a core naming /etc/shadow or a FIFO gains nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

MAX_FILES = 4096
_NEVER = ("/proc/", "/sys/", "/dev/")


def from_maps(lines: Iterable[str]) -> list[str]:
    """The mapped files of /proc/PID/maps lines (as the /proc context stores them)."""
    seen: dict[str, None] = {}
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/") and len(seen) < MAX_FILES:
            seen[parts[5].removesuffix(" (deleted)")] = None
    return list(seen)


def elf_files(paths: Iterable[str]) -> list[str]:
    """The paths that are regular files starting with the ELF magic, outside /proc, /sys, /dev."""
    out = []
    for p in paths:
        if not isinstance(p, str) or not p.startswith("/") or p.startswith(_NEVER) or "\0" in p:
            continue
        try:
            st = os.stat(p)
            if not stat.S_ISREG(st.st_mode):
                continue
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
            try:
                magic = os.pread(fd, 4, 0)
            finally:
                os.close(fd)
        except OSError:
            continue
        if magic == b"\x7fELF":
            out.append(p)
    return out
