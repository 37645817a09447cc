"""Small synthetic ELF cores for the diff's tests that need no root: the notes snapd's writer
builds (snapd.core.notes), PT_LOADs whose pages are holes, zeros or patterns, written sparsely."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from snapd.core import elf, notes
from snapd.procfs import Mapping

PAGE = 4096
EXE = "/usr/bin/synth"


def page(byte: int) -> bytes:
    return bytes([byte]) * PAGE


@dataclass
class SLoad:
    """One mapping: ``pages`` long at ``start``; ``data`` maps page index -> its bytes (padded
    to a page); pages not in it are holes. ``dumped=False`` leaves it out (p_filesz 0)."""

    start: int
    pages: int
    data: dict[int, bytes] = field(default_factory=dict)
    perms: str = "rw-p"
    path: str = ""
    cls: str = "anon"
    dumped: bool = True

    @property
    def end(self) -> int:
        return self.start + self.pages * PAGE


def _regs(sp: int) -> bytes:
    regs = [0] * 27
    regs[19] = sp
    return struct.pack("<27Q", *regs)


def write_core(
    path: Path,
    loads: Sequence[SLoad],
    *,
    pid: int = 4242,
    tids: Sequence[int] = (4242,),
    sps: Sequence[int] = (),
    start_time: int | None = 777,
    snapd: bool = True,
    comm: str = "synth",
    exe: str = EXE,
    when: float = 1_700_000_000.0,
) -> Path:
    """Write a core at ``path`` the way snapd's writer lays one out (snapd=False: no SNAPD note,
    as the kernel's). The executable is the first load with a path (AT_ENTRY points into it)."""
    threads = [
        notes.ThreadRegs(
            tid=t,
            regs=_regs(sps[i] if i < len(sps) else 0),
            fpregs=bytes(512),
            xstate=b"",
            siginfo=bytes(128),
            signal=0,
            sigmask=0,
            sigpend=0,
            utime=0,
            stime=0,
        )
        for i, t in enumerate(tids)
    ]
    proc = notes.ProcessInfo(
        pid=pid, ppid=1, pgrp=pid, sid=pid, comm=comm, state="S", flags=0, nice=0, uid=0, gid=0,
        cmdline=comm.encode() + b"\0", cutime=0, cstime=0,
    )  # fmt: skip
    maps = [
        Mapping(ld.start, ld.end, ld.perms, 0, (8, 1) if ld.path else (0, 0), 1 if ld.path else 0, ld.path)
        for ld in loads
    ]
    entry = next((ld.start for ld in loads if ld.path == exe), 0)
    auxv = struct.pack("<QQQQ", 9, entry, 0, 0)  # AT_ENTRY, AT_NULL
    info: dict[str, object] | None = None
    if snapd:
        info = {"version": 1, "content": "default", "snapshot": "frozen", "time": when,
                "classes": [ld.cls for ld in loads], "shared_live": []}  # fmt: skip
        if start_time is not None:
            info["start_time"] = start_time
    note_data = notes.build(threads, proc, auxv, maps, info)
    phnum = 1 + len(loads)
    notes_off = elf.EHDR_SIZE + elf.PHDR_SIZE * phnum
    off = elf.page_up(notes_off + len(note_data))
    phdrs = [elf.Phdr(elf.PT.NOTE, 0, notes_off, 0, len(note_data), 0, 4)]
    offsets = []
    for ld in loads:
        flags = (
            (4 if ld.perms[0] == "r" else 0)
            | (2 if ld.perms[1] == "w" else 0)
            | (1 if ld.perms[2] == "x" else 0)
        )
        filesz = ld.pages * PAGE if ld.dumped else 0
        phdrs.append(elf.Phdr(elf.PT.LOAD, flags, off, ld.start, filesz, ld.pages * PAGE, PAGE))
        offsets.append(off)
        off += filesz
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, off)
        os.pwrite(fd, elf.ehdr(phnum) + b"".join(p.pack() for p in phdrs), 0)
        os.pwrite(fd, note_data, notes_off)
        for ld, base in zip(loads, offsets, strict=True):
            if ld.dumped:
                for i, data in ld.data.items():
                    os.pwrite(fd, data.ljust(PAGE, b"\0")[:PAGE], base + i * PAGE)
    finally:
        os.close(fd)
    if not snapd:
        os.utime(path, (when, when))
    return path


def standard(**over: SLoad) -> list[SLoad]:
    """A small process: the executable's text and data, a heap, an anonymous buffer, a stack."""
    loads = [
        SLoad(0x400000, 2, {0: b"\x7fELF"}, "r-xp", EXE, "text"),
        SLoad(0x402000, 1, {0: page(0x11)}, "rw-p", EXE, "data"),
        SLoad(0x1000000, 4, {0: page(1), 1: page(2)}, cls="heap"),
        SLoad(0x7F0000000000, 16, {i: page(i + 1) for i in range(16)}),
        SLoad(0x7FFF00000000, 8, {7: page(0x55)}, cls="stack"),
    ]
    for k, v in over.items():
        idx = {"text": 0, "data": 1, "heap": 2, "buf": 3, "stack": 4}[k]
        loads[idx] = v
    return loads
