"""Which pages of an anonymous mapping exist (present in RAM or in swap).

Pages never faulted in become holes in the core: the file's apparent size is the address
space, its disk use is what was resident. The PAGEMAP_SCAN ioctl (6.7+, fs/proc/task_mmu.c
do_pagemap_scan; Documentation/admin-guide/mm/pagemap.rst) returns runs of pages in one call
(~4 ms per GiB here); older kernels fall back to /proc/PID/pagemap, scanned at C speed with
bytes slicing and a regex, never a per-page Python loop.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Iterator

from snapd.procfs import PAGE_SIZE
from snapd.sys import pagemap
from snapd.sys.pagemap import Cat, Region, ScanArg

_VEC_LEN = 4096


class PageMap:
    """Present-page runs of one process; open once per dump, close when done."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        self.scan_ok = True
        self._vec = (Region * _VEC_LEN)()

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> PageMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def present(self, start: int, end: int) -> list[tuple[int, int]]:
        """Runs ``[(start, end), ...]`` of pages present or swapped, zero-page mappings excluded."""
        if self.scan_ok:
            try:
                return list(self._scan(start, end))
            except OSError as err:
                if err.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.scan_ok = False
        return list(self._read(start, end))

    def has_anon(self, start: int, end: int) -> bool:
        """Does [start, end) hold an anonymous page (for a file mapping: a written, COW-ed one)?
        Stops at the first one found."""
        if self.scan_ok:
            try:
                return self._scan_anon(start, end)
            except OSError as err:
                if err.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.scan_ok = False
        return self._read_anon(start, end)

    def _scan_anon(self, start: int, end: int) -> bool:
        arg = ScanArg()
        arg.size = ctypes.sizeof(ScanArg)
        arg.start, arg.end = start, end
        arg.vec = ctypes.addressof(self._vec)
        arg.vec_len = 1
        arg.max_pages = 1
        arg.category_inverted = Cat.FILE
        arg.category_mask = Cat.FILE  # not a page-cache page...
        arg.category_anyof_mask = Cat.PRESENT | Cat.SWAPPED  # ...that exists
        arg.return_mask = Cat.PRESENT | Cat.SWAPPED
        return pagemap.scan(self.fd, arg) > 0

    def _scan(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        arg = ScanArg()
        arg.size = ctypes.sizeof(ScanArg)
        arg.vec = ctypes.addressof(self._vec)
        arg.vec_len = _VEC_LEN
        # Present or swapped, and not the shared zero page (read-faulted, never written).
        arg.category_inverted = Cat.PFNZERO
        arg.category_mask = Cat.PFNZERO
        arg.category_anyof_mask = Cat.PRESENT | Cat.SWAPPED
        arg.return_mask = Cat.PRESENT | Cat.SWAPPED
        pos = start
        last: tuple[int, int] | None = None
        while pos < end:
            arg.start = pos
            arg.end = end
            arg.walk_end = 0
            n = pagemap.scan(self.fd, arg)
            reached = arg.walk_end
            for i in range(n):
                r = self._vec[i]
                rstart, rend = max(r.start, last[1] if last else 0), r.end
                reached = max(reached, rend)
                if rend <= rstart:
                    continue  # already returned
                if last and last[1] == rstart:
                    last = (last[0], rend)
                    continue
                if last:
                    yield last
                last = (rstart, rend)
            # The walk goes on from walk_end, or from past the regions returned if they reach
            # further: 6.18 was seen to return every region of an 88 MiB mapping with walk_end
            # 6 MiB in, and the same regions again from there, which copied them twice (and,
            # out of order, wrote one below a window of the output's mapping: copy_runs).
            if reached <= pos:
                break
            pos = reached
        if last:
            yield last

    def _read(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Fallback: 8 bytes per page; bit 63 present, bit 62 swapped (the top byte's 0xC0)."""
        chunk_pages = 1 << 18
        first = start // PAGE_SIZE
        last = end // PAGE_SIZE
        runs: list[tuple[int, int]] = []
        for cp in range(first, last, chunk_pages):
            n = min(chunk_pages, last - cp)
            data = os.pread(self.fd, n * 8, cp * 8)
            flags = data[7::8].translate(_PRESENT_TABLE)
            for m in _RUN.finditer(flags):
                s = (cp + m.start()) * PAGE_SIZE
                e = (cp + m.end()) * PAGE_SIZE
                if runs and runs[-1][1] == s:
                    runs[-1] = (runs[-1][0], e)
                else:
                    runs.append((s, e))
        return iter(runs)

    def _read_anon(self, start: int, end: int) -> bool:
        """Fallback: an entry present or swapped (bit 63, 62) without PM_FILE (bit 61: "file-page
        or shared-anon", fs/proc/task_mmu.c pte_to_pagemap_entry) is an anonymous page."""
        chunk_pages = 1 << 15
        for cp in range(start // PAGE_SIZE, end // PAGE_SIZE, chunk_pages):
            n = min(chunk_pages, end // PAGE_SIZE - cp)
            if b"1" in os.pread(self.fd, n * 8, cp * 8)[7::8].translate(_ANON_TABLE):
                return True
        return False


_PRESENT_TABLE = bytes(0x31 if b & 0xC0 else 0x30 for b in range(256))
_ANON_TABLE = bytes(0x31 if b & 0xC0 and not b & 0x20 else 0x30 for b in range(256))
_RUN = re.compile(rb"1+")
