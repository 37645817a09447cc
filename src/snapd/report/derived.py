"""Small cores made from parts of another: the "at the event" core of a firing thread.

An event (a syscall the rule matched) records the firing thread's user registers (struct
user_regs_struct) and the top of its user stack, at most :data:`MAX_EVENT_STACK` bytes from the
stack pointer up. To unwind that with the same library as every other stack, a core is derived
that a reader takes for the process at the event:

- from the snapshot core: NT_PRPSINFO, NT_AUXV, NT_FILE, and the PT_LOADs that hold the modules'
  ELF headers (file mappings at offset 0) and the vdso, so that the reader finds the same
  modules at the same addresses, then their files, CFI and symbols;
- one NT_PRSTATUS: the snapshot's note of the firing thread with the event's registers;
- one PT_LOAD at the event's stack pointer holding the recorded bytes, and nothing around it:
  an unwinder that climbs past the recorded bytes finds no memory there and stops, rather than
  read the snapshot's later stack.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from snapd.core import elf
from snapd.core.elf import PF, PT, Phdr
from snapd.report.corefile import (
    NT_AUXV,
    NT_FILE,
    NT_PRPSINFO,
    NT_PRSTATUS,
    PRSTATUS_REGS,
    PRSTATUS_TID,
    CoreNotes,
)
from snapd.report.model import MAX_DERIVED, USER_REGS_SIZE, EventStack

AT_SYSINFO_EHDR = 33
MAX_HEADER_BYTES = 64 << 10  # per module: its ELF header and program headers are in the first pages
CORE = b"CORE"


@dataclass(frozen=True)
class Piece:
    """One PT_LOAD of a core being built and the bytes it holds (len(data) is its p_filesz)."""

    vaddr: int
    memsz: int
    flags: int
    data: bytes


def build_core(notes: Sequence[tuple[bytes, int, bytes]], pieces: Sequence[Piece]) -> bytes:
    """An ET_CORE image: one PT_NOTE with ``notes`` (owner, type, desc), then the PT_LOADs."""
    blob = b"".join(elf.note(name, ntype, desc) for name, ntype, desc in notes)
    phnum = 1 + len(pieces)
    xnum = phnum >= elf.PN_XNUM
    off = elf.EHDR_SIZE + phnum * elf.PHDR_SIZE
    shoff = off if xnum else 0
    if xnum:
        off += elf.SHDR_SIZE
    phdrs = [Phdr(PT.NOTE, 0, off, 0, len(blob), 0, 4)]
    off = elf.page_up(off + len(blob))
    layout = []
    for p in pieces:
        phdrs.append(Phdr(PT.LOAD, p.flags, off, p.vaddr, len(p.data), max(p.memsz, len(p.data)), elf.PAGE))
        layout.append((off, p.data))
        off = elf.page_up(off + len(p.data))
    out = bytearray(off)
    head = elf.ehdr(phnum, shoff) + b"".join(ph.pack() for ph in phdrs)
    if xnum:
        head += elf.xnum_shdr(phnum)
    out[: len(head)] = head
    start = phdrs[0].offset
    out[start : start + len(blob)] = blob
    for o, data in layout:
        out[o : o + len(data)] = data
    return bytes(out)


def prstatus_with(notes: CoreNotes, ev: EventStack) -> bytes:
    """The firing thread's NT_PRSTATUS with the event's registers (a plain one if it is gone)."""
    base = notes.prstatus.get(ev.tid)
    if base is None:
        raw = bytearray(336)
        struct.pack_into("<i", raw, PRSTATUS_TID, ev.tid)
    else:
        raw = bytearray(base)
    raw[PRSTATUS_REGS : PRSTATUS_REGS + USER_REGS_SIZE] = ev.regs
    return bytes(raw)


def event_core(notes: CoreNotes, f: BinaryIO, ev: EventStack) -> bytes:
    """The derived core of the event (see the module docstring)."""
    out_notes: list[tuple[bytes, int, bytes]] = [(CORE, NT_PRSTATUS, prstatus_with(notes, ev))]
    for ntype, raw in ((NT_PRPSINFO, notes.prpsinfo), (NT_AUXV, notes.auxv), (NT_FILE, notes.file)):
        if raw:
            out_notes.append((CORE, ntype, raw))
    wanted = {start for start, _end, pgoff, _path in notes.files() if pgoff == 0}
    vdso = notes.auxv_value(AT_SYSINFO_EHDR)
    if vdso:
        wanted.add(vdso)
    sp, top = ev.sp, ev.sp + len(ev.stack)
    pieces = []
    total = 0
    for seg in notes.loads:
        if seg.vaddr not in wanted or not seg.filesz or (seg.vaddr < top and sp < seg.vaddr + seg.memsz):
            continue
        size = min(seg.filesz, seg.memsz, MAX_HEADER_BYTES)
        data = notes.read(f, seg.vaddr, size)
        total += len(data)
        if total > MAX_DERIVED:
            break
        pieces.append(Piece(seg.vaddr, len(data), seg.flags, data))
    if ev.stack:
        pieces.append(Piece(sp, len(ev.stack), int(PF.R | PF.W), ev.stack))
    pieces.sort(key=lambda p: p.vaddr)
    return build_core(out_notes, pieces)
