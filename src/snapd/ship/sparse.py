"""Sparse files: find the data runs of a file, read them, and write a file back with its holes.

A core is mostly holes (absent anonymous pages are never written, fs/binfmt_elf.c dump_skip), so
nothing here reads or writes the zeros of a hole: ``lseek(2)`` ``SEEK_DATA``/``SEEK_HOLE`` give the
runs of data (a file system without them reports the whole file as one run, which is still
correct), and the writer seeks over holes and over all-zero pages it is handed, then sets the
length with ``ftruncate(2)`` so a trailing hole costs nothing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

PAGE = 4096
CHUNK = 1 << 20
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_PAGE = bytes(PAGE)

Run = tuple[int, int]  # (offset, length)


def data_runs(fd: int, size: int | None = None) -> list[Run]:
    """The (offset, length) runs of data of an open file, in order; holes are left out."""
    end = os.fstat(fd).st_size if size is None else size
    runs: list[Run] = []
    off = 0
    while off < end:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data after off: the rest is a hole
                break
            if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(0, end)] if end else []  # no hole support: all data
            raise
        if start >= end:
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        if stop <= start:
            break
        runs.append((start, stop - start))
        off = stop
    return runs


def data_bytes(runs: list[Run]) -> int:
    return sum(n for _, n in runs)


def read_runs(fd: int, runs: list[Run], chunk: int = CHUNK) -> Iterator[memoryview]:
    """Yield the bytes of ``runs`` in order, in pieces of at most ``chunk`` bytes.

    The buffer is reused: a piece is valid only until the next one is asked for. A file that
    shrank under us ends early with :class:`EOFError` rather than yielding invented zeros."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    for off, length in runs:
        done = 0
        while done < length:
            want = min(chunk, length - done)
            got = os.preadv(fd, [view[:want]], off + done)
            if got <= 0:
                raise EOFError(f"file ended at {off + done}, inside a data run")
            yield view[:got]
            done += got


def is_zero(piece: memoryview | bytes) -> bool:
    n = len(piece)
    if n == CHUNK:
        return piece == _ZERO_CHUNK
    return piece == bytes(n)


class SparseWriter:
    """Write pieces at given offsets into ``fd``, leaving holes where pages are all zeros.

    ``write_at`` may be given any piece; whole zero pages inside it are skipped (so a core
    decompressed from a plain ``.zst`` gets its holes back). ``finish(size)`` sets the length."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0  # bytes actually written (not skipped)

    def write_at(self, off: int, piece: memoryview | bytes) -> None:
        view = memoryview(piece)
        n = len(view)
        if n >= PAGE and is_zero(view):
            return
        pos = 0
        # Skip zero pages at page granularity relative to the file, so holes stay page-aligned.
        while pos < n:
            page_end = min(n, pos + PAGE - ((off + pos) % PAGE))
            part = view[pos:page_end]
            if len(part) == PAGE and part == _ZERO_PAGE:
                pos = page_end
                continue
            # Coalesce the following non-zero pages into one pwrite.
            stop = page_end
            while stop < n:
                nxt = min(n, stop + PAGE)
                if nxt - stop == PAGE and view[stop:nxt] == _ZERO_PAGE:
                    break
                stop = nxt
            self._pwrite(off + pos, view[pos:stop])
            pos = stop

    def _pwrite(self, off: int, view: memoryview) -> None:
        while view:
            done = os.pwrite(self.fd, view, off)
            self.written += done
            view = view[done:]
            off += done

    def finish(self, size: int) -> None:
        os.ftruncate(self.fd, size)


def disk_bytes(path: str) -> int:
    """Bytes allocated on disk (st_blocks is in 512-byte units, stat(2))."""
    return os.stat(path).st_blocks * 512
