"""Which 4 KiB pages differ between two cores: holes skipped, the rest compared in C, not Python.

Cores are sparse: a page the target never touched is a hole (snapd and the kernel seek over it),
and a hole reads as zeros. So the content of a page is what a read of the file returns, and a
page that is a hole on one side and data on the other differs only if that data is not all
zeros, with no special case. The work is:

1. the data runs of each side, from lseek(2) SEEK_DATA/SEEK_HOLE (a filesystem without them
   reports the whole file as data, which is still correct, only slower);
2. their union, with short holes between runs read rather than skipped;
3. both sides of each union run taken a window at a time (mapped, see :class:`Source`),
   viewed by numpy as (pages, 512) u64 and compared with ``(a != b).any(axis=1)``: one pass
   in C per window; the Python loop runs once per window, never per page.

Memory is the windows in flight and numpy's mask of each (1/8 of a window), whatever the size
of the cores.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import mmap
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

# numpy's bundled OpenBLAS starts cpu_count - 1 server threads when numpy is imported, and they
# stay, idle, in whatever imported it (the daemon, through daemon/compare). The diff does no
# linear algebra: one BLAS thread, the caller's, is all it could use.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt

from snapd.diff.errors import BadCore

PAGE = 4096
#: One window per side and worker. Measured on 1 GiB cores in the page cache here: 4 MiB
#: windows cost the least CPU (0.23 s for 1 GiB a side; 1 MiB: 0.24 s; reading with preadv
#: instead of mapping: 0.29 s), and a window counts in our RSS while it is compared.
WINDOW = 4 << 20
#: A hole shorter than this between two data runs is read (as zeros) rather than skipped: a
#: read of 256 KiB costs about what the two lseek calls and a loop turn cost.
GAP = 256 << 10
#: Read-only shared mappings of the file, page tables filled at mmap time (mmap(2)).
MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
#: At most this many changed ranges are kept per mapping (their count is always exact).
MAX_RANGES = 8

Run = tuple[int, int]


def data_runs(path: str, fd: int, start: int, end: int) -> Iterator[Run]:
    """The parts of file range [start, end) that hold data, in order (lseek(2) SEEK_DATA)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data at or after pos
                return
            if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no SEEK_DATA here: all data
                yield pos, end
                return
            raise BadCore(path, f"cannot read: {err.strerror or err}") from err
        if data >= end:
            return
        yield data, min(hole, end)
        pos = hole


class Counted:
    """An iterator of runs that adds up the bytes it yields (the resident bytes of a mapping)."""

    def __init__(self, runs: Iterator[Run]) -> None:
        self._runs = runs
        self.total = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> Run:
        s, e = next(self._runs)
        self.total += e - s
        return s, e

    def drain(self) -> int:
        for _ in self:
            pass
        return self.total


def resident(path: str, fd: int, start: int, length: int) -> int:
    """Bytes of data (not holes) in file range [start, start + length)."""
    return Counted(data_runs(path, fd, start, start + length)).drain()


def clip(runs: Iterable[Run], base: int, length: int) -> Iterator[Run]:
    """``runs`` (file offsets, ascending) within [base, base + length), made relative to base.

    Stops consuming at the first run past the range, which it loses: callers pass a
    :class:`Counted` that they drain afterwards, so the resident count stays exact."""
    for s, e in runs:
        s, e = max(s - base, 0), min(e - base, length)
        if s >= length:
            return
        if s < e:
            yield s, e


def union(a: Iterable[Run], b: Iterable[Run], length: int, gap: int = GAP) -> Iterator[Run]:
    """Merge two ascending run lists, widened to whole pages, joining runs closer than ``gap``."""
    cur: Run | None = None
    for s, e in heapq.merge(a, b):
        s = s // PAGE * PAGE
        e = min(-(-e // PAGE) * PAGE, -(-length // PAGE) * PAGE)
        if cur is not None and s <= cur[1] + gap:
            cur = (cur[0], max(cur[1], e))
            continue
        if cur is not None:
            yield cur
        cur = (s, e)
    if cur is not None:
        yield cur


@dataclass
class PageDiff:
    """The outcome of comparing one range of two cores."""

    changed: int = 0  # 4 KiB pages whose bytes differ
    compared: int = 0  # bytes read from each side (holes on both sides are not read)
    ranges: list[Run] = field(default_factory=list)  # first changed ranges, relative, [s, e)


class Source:
    """One core file, read window by window: each window mapped read-only (MAP_POPULATE fills
    its page tables in one call), so that the compare reads the page cache itself, without a
    copy; else, where a file cannot be mapped, read with preadv(2) into a buffer.

    A window is unmapped as soon as it is compared: the page cache we look at is never more
    than the windows in flight of our RSS or address space (a bounded subprocess may run us
    under RLIMIT_AS). Reading a mapping past the end of its file raises SIGBUS, so the file's
    size is checked before each window is mapped; a core is only ever replaced (renamed over),
    never shortened in place, by snapd.
    """

    def __init__(self, path: str, fd: int, window: int, use_mmap: bool = True) -> None:
        self.path, self.fd, self._window = path, fd, window
        self._local = threading.local()  # each worker's own read buffer, made when first needed
        self.mappable = use_mmap

    def window(self, off: int, n: int) -> tuple[npt.NDArray[np.uint8], mmap.mmap | None]:
        """``n`` bytes at ``off``, padded with zeros to whole pages, and the mapping holding
        them (None: a buffer of this thread's, valid until its next call). Give the mapping to
        :meth:`release` once every view of the array is gone."""
        if self.mappable and off % 8 == 0 and n % PAGE == 0:
            self._check(off + n)
            lo = off // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
            try:
                mm = mmap.mmap(self.fd, off + n - lo, MAP_FLAGS, mmap.PROT_READ, offset=lo)
            except (OSError, ValueError, OverflowError):  # a filesystem that cannot map: read
                self.mappable = False
            else:
                return np.frombuffer(mm, dtype=np.uint8, count=n, offset=off - lo), mm
        return self._read(off, n), None

    @staticmethod
    def release(mm: mmap.mmap | None) -> None:
        if mm is not None:
            with contextlib.suppress(BufferError):  # a view still alive (an exception's frame):
                mm.close()  # the mapping goes when it does

    def _check(self, end: int) -> None:
        try:
            size = os.fstat(self.fd).st_size
        except OSError as err:
            raise BadCore(self.path, f"cannot stat: {err.strerror or err}") from err
        if size < end:
            raise BadCore(self.path, "the file shrank while it was being compared")

    def _read(self, off: int, n: int) -> npt.NDArray[np.uint8]:
        buf: npt.NDArray[np.uint8] | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = np.zeros(self._window, dtype=np.uint8)
        view = memoryview(buf)  # type: ignore[arg-type]
        got = 0
        try:
            while got < n:
                k = os.preadv(self.fd, [view[got:n]], off + got)
                if k == 0:
                    raise BadCore(self.path, "the file shrank while it was being compared")
                got += k
        except OSError as err:
            raise BadCore(self.path, f"cannot read: {err.strerror or err}") from err
        end = -(-n // PAGE) * PAGE
        buf[n:end] = 0
        return buf[:end]


#: (relative offset, bytes, pages changed, their page numbers in the window when any)
_Result = tuple[int, int, int, "npt.NDArray[np.intp] | None"]


class Comparer:
    """The two sides of one diff, compared window by window, on ``workers`` threads.

    numpy's compare and madvise/preadv run without the GIL, so windows go to a small pool:
    where one core cannot keep up with memory, two can. At most ``workers + 1`` windows are in
    flight, so memory stays bounded; results are merged in order."""

    def __init__(self, a: Source, b: Source, window: int = WINDOW, workers: int = 1) -> None:
        if window % PAGE or window <= 0:
            raise ValueError(f"window {window} is not a positive multiple of {PAGE}")
        self.a, self.b, self.window = a, b, window
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self.workers, "snapd-diff") if self.workers > 1 else None

    def close(self) -> None:
        """Wait for every window in flight: the sources must not be closed under a worker."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def compare(self, base_a: int, base_b: int, length: int, runs: Iterable[Run]) -> PageDiff:
        """Compare ``length`` bytes at file offsets ``base_a`` of A and ``base_b`` of B over
        ``runs`` (ascending, relative to the bases, page-aligned starts; everything outside
        them is zeros on both sides). A last partial page compares as if padded with zeros."""
        out = PageDiff()
        windows = _windows(runs, length, self.window)
        if self._pool is None:
            for pos, n in windows:
                _merge(out, self._one(base_a, base_b, pos, n))
            return out
        pending: deque[Future[_Result]] = deque()
        try:
            for pos, n in windows:
                pending.append(self._pool.submit(self._one, base_a, base_b, pos, n))
                if len(pending) > self.workers:
                    _merge(out, pending.popleft().result())
            while pending:
                _merge(out, pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()
            wait(pending)
        return out

    def _one(self, base_a: int, base_b: int, rel: int, n: int) -> _Result:
        wa, mm_a = self.a.window(base_a + rel, n)
        try:
            wb, mm_b = self.b.window(base_b + rel, n)
            try:
                pages = len(wa) // PAGE
                a = wa.view(np.uint64).reshape(pages, PAGE // 8)
                b = wb.view(np.uint64).reshape(pages, PAGE // 8)
                mask = (a != b).any(axis=1)
                del a, b, wb
            finally:
                self.b.release(mm_b)
            del wa
        finally:
            self.a.release(mm_a)
        k = int(np.count_nonzero(mask))
        return rel, n, k, np.flatnonzero(mask) if k else None


def _windows(runs: Iterable[Run], length: int, window: int) -> Iterator[Run]:
    """(offset, size) of each window of ``runs`` within [0, length)."""
    for s, e in runs:
        e = min(e, length)
        for pos in range(s, e, window):
            yield pos, min(window, e - pos)


def _merge(out: PageDiff, res: _Result) -> None:
    rel, n, k, idx = res
    out.compared += n
    out.changed += k
    if idx is not None and (len(out.ranges) < MAX_RANGES or out.ranges[-1][1] == rel):
        _add_ranges(out.ranges, idx, rel)


def _add_ranges(ranges: list[Run], idx: npt.NDArray[np.intp], rel: int) -> None:
    """Append the changed pages ``idx`` (ascending page numbers within a window at ``rel``) as
    [start, end) byte ranges, joining the last one if adjacent, up to MAX_RANGES."""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]])) + 1
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        s, e = rel + s * PAGE, rel + e * PAGE
        if ranges and ranges[-1][1] == s:
            ranges[-1] = (ranges[-1][0], e)
        elif len(ranges) < MAX_RANGES:
            ranges.append((s, e))
        else:
            return
