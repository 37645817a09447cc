"""Measurements and checks shared by the reliability tests: /proc accounting of the daemon,
core file sanity (a listed core is a whole ELF core), the catalog's SQLite integrity."""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARTIAL = ".snapd-partial."
CLK_TCK = os.sysconf("SC_CLK_TCK")


def seeded_rng(name: str) -> tuple[random.Random, int]:
    """A RNG seeded from SNAPD_TEST_SEED (or the clock), seed returned so failures can name it."""
    seed = int(os.environ.get("SNAPD_TEST_SEED", time.time_ns() % 1_000_000))
    return random.Random(f"{name}:{seed}"), seed


def partials(cores_dir: Path) -> list[str]:
    try:
        return [n for n in os.listdir(cores_dir) if n.startswith(PARTIAL)]
    except FileNotFoundError:
        return []


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


def integrity(db: Path) -> str:
    """PRAGMA integrity_check of the catalog, opened as a second reader (WAL allows it)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return ";".join(str(r[0]) for r in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


def pending_rows(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT COUNT(*) FROM cores WHERE status = 'pending'").fetchone()[0])
    finally:
        con.close()


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


def complete_cores(listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in listing if c["status"] == "complete"]


def check_listing(listing: list[dict[str, Any]], cores_dir: Path) -> None:
    """Only complete or failed entries; every complete one is a whole file of the listed size,
    every failed one has no file; nothing in cores/ that no complete entry names."""
    on_disk = set(os.listdir(cores_dir))
    named = set()
    for c in listing:
        name = os.path.basename(c["path"])
        assert c["status"] == "complete" or c["status"].startswith("failed"), c
        if c["status"] == "complete":
            st = os.stat(c["path"])
            assert st.st_size == int(c["size"]), c
            elf_segments(c["path"])
            named.add(name)
        else:
            assert name not in on_disk, c
    assert on_disk <= named, f"unlisted files in cores/: {sorted(on_disk - named)}"
