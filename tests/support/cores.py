"""Checks of core files as a reader sees them: every byte the headers promise is there, bytes
at a virtual address, a victim's pattern."""

from __future__ import annotations

import os
import struct

from elftools.elf.elffile import ELFFile

from snapd.core.inspect import CoreView


def elf_segments(path: str) -> list[tuple[int, int, int, int, int]]:
    """(p_type, p_offset, p_vaddr, p_filesz, p_memsz) of every program header of an ET_CORE,
    after checking that the file holds every byte the headers promise (not half-written)."""
    with open(path, "rb") as f:
        eh = f.read(64)
        assert eh[:4] == b"\x7fELF" and eh[4] == 2, f"{path}: not an ELF64 file"
        (e_type,) = struct.unpack_from("<H", eh, 16)
        assert e_type == 4, f"{path}: e_type {e_type}, not ET_CORE"
        (e_phoff,) = struct.unpack_from("<Q", eh, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", eh, 54)
        f.seek(e_phoff)
        raw = f.read(e_phentsize * e_phnum)
        size = os.fstat(f.fileno()).st_size
    segs = []
    for i in range(e_phnum):
        p_type, _flags, off, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", raw, i * e_phentsize
        )
        assert off + filesz <= size, f"{path}: segment {i} ends at {off + filesz}, file is {size}"
        segs.append((p_type, off, vaddr, filesz, memsz))
    assert segs and segs[0][0] == 4, f"{path}: no PT_NOTE first"
    return segs


def read_core_at(path: str, addr: int, length: int) -> bytes | None:
    """Bytes at a virtual address in a core (None if not in the file)."""
    for p_type, off, vaddr, filesz, _memsz in elf_segments(path):
        if p_type == 1 and vaddr <= addr and addr + length <= vaddr + filesz:
            with open(path, "rb") as f:
                f.seek(off + addr - vaddr)
                return f.read(length)
    return None


def check_bigmem_core(path: str, buf_addr: int, touch_mib: int, samples: int = 16) -> None:
    """A core of tests/victims/bigmem.c holds its pattern: page i is the byte (i % 251) + 1."""
    pages = touch_mib << 8
    step = max(1, pages // samples)
    for i in [*range(0, pages - 1, step), pages - 2]:
        data = read_core_at(path, buf_addr + i * 4096, 16)
        assert data == bytes([(i % 251) + 1]) * 16, f"{path}: page {i} of the buffer holds {data!r}"


def ready_addrs(line: str) -> dict[str, int]:
    """``ready name=0xADDR ...`` (a victim's ready line) -> {name: address}."""
    return {k: int(v, 16) for k, v in (kv.split("=") for kv in line.split()[1:])}


def byte_at(path: str | os.PathLike[str], core: CoreView, addr: int) -> bytes:
    """Read one byte of target memory from the core file (through its PT_LOAD); ``core`` is
    what snapd.core.inspect.read_core made of it."""
    s = next(s for s in core.segments if s.start <= addr < s.end)
    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] == s.start:
                f.seek(seg["p_offset"] + addr - s.start)
                return f.read(1)
    raise AssertionError("no segment")
