"""The files a core says were mapped (its NT_FILE note), read in a sandboxed worker.

The report's worker may read, by path, only what the caller allows it: the system trees and the
modules of the target. Where no /proc context names those modules, this first, smaller worker
reads them out of the core (hostile input, so confined like the report itself); the caller
keeps only regular ELF files (:func:`elf_files`), so a forged NT_FILE naming /etc/shadow gains
nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Any

from snapd.report.corefile import read_notes

MAX_FILES = 4096
_NEVER = ("/proc/", "/sys/", "/dev/")


def sandbox_reads(args: dict[str, Any]) -> list[str | int]:
    return [int(args["core_fd"])]


def sandboxed(args: dict[str, Any]) -> dict[str, Any]:
    with os.fdopen(os.dup(int(args["core_fd"])), "rb") as f:
        notes = read_notes(f)
    seen: dict[str, None] = {}
    for _start, _end, _pgoff, path in notes.files():
        if path.startswith("/") and len(seen) < MAX_FILES:
            seen[path] = None
    return {"files": list(seen)}


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
