"""Staging memory: page-aligned 4 MiB chunks, faulted in ahead of their use.

A few warm chunks per process (lent to one copy at a time), and for one dump up to a budget of
staging, part faulted in before the halt (in parallel), the rest on demand while halted, given
back chunk by chunk once written. See :mod:`snapd.core.staging` for the copy that fills them.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import queue
import threading
import time
from typing import ClassVar

CHUNK = 4 << 20  # one staging chunk
WARM_CHUNKS = 6  # kept faulted in for the life of the process (the daemon dumps many times)

MADV_POPULATE_WRITE = 23  # include/uapi/asm-generic/mman-common.h (Linux 5.14)


class Region:
    """An anonymous mapping whose pages are faulted in by the kernel, ``populate`` bytes of it at
    once (MADV_POPULATE_WRITE: no page fault per page later, when it is filled while a target is
    halted; mm/madvise.c), the rest on demand by :meth:`populate`."""

    def __init__(self, size: int, populate: int | None = None) -> None:
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * size).from_buffer(self._map)
        self.addr = ctypes.addressof(self._anchor)
        self.populated = 0
        self._lock = threading.Lock()
        self.populate(0, size if populate is None else min(populate, size))

    def populate(self, offset: int, length: int) -> None:
        if length <= 0 or self._anchor is None:
            return
        try:
            self._map.madvise(MADV_POPULATE_WRITE, offset, length)
        except OSError:  # before 5.14: write each page
            ctypes.memset(self.addr + offset, 0, length)
        with self._lock:
            self.populated += length

    def release(self, addr: int, length: int) -> None:
        """Give these pages back now (MADV_DONTNEED): the page cache being written next can
        have them while they are still warm, instead of memory the hypervisor must fault in."""
        if self._anchor is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._map.madvise(mmap.MADV_DONTNEED, addr - self.addr, length)

    def chunks(self) -> list[int]:
        return [self.addr + i for i in range(0, self.size - CHUNK + 1, CHUNK)]

    def close(self) -> None:
        if self._anchor is not None:
            self._anchor = None  # the buffer export must go before the mapping can be closed
            self._map.close()


class _Warm:
    """The few chunks every dump uses, faulted in once per process (as many as dumps so far
    needed, up to WARM_CHUNKS), lent to one Pool at a time (a daemon may calibrate or dump in
    two threads at once)."""

    _lock = threading.Lock()
    _region: ClassVar[Region | None] = None
    _ready = 0  # chunks faulted in
    _lent = False

    @classmethod
    def prepare(cls, n: int) -> None:
        with cls._lock:
            if cls._region is None:
                cls._region = Region(WARM_CHUNKS * CHUNK, populate=0)
            n = min(max(n, 1), WARM_CHUNKS)
            if n > cls._ready:
                cls._region.populate(cls._ready * CHUNK, (n - cls._ready) * CHUNK)
                cls._ready = n

    @classmethod
    def lend(cls) -> list[int] | None:
        with cls._lock:
            if cls._lent or cls._region is None or not cls._ready:
                return None
            cls._lent = True
            return cls._region.chunks()[: cls._ready]

    @classmethod
    def give_back(cls) -> None:
        with cls._lock:
            cls._lent = False


def warm(nbytes: int = WARM_CHUNKS * CHUNK) -> None:
    """Fault in the warm chunks a copy of about ``nbytes`` uses, now (not while a target is
    halted): enough to keep the reader and the writers busy, never more than WARM_CHUNKS."""
    _Warm.prepare(max(2, -(-nbytes // CHUNK)))


SLICE = 4 * CHUNK  # faulted in per call before the halt: the deadline is checked between them


def _populate_parallel(region: Region, length: int, deadline: float | None = None) -> int:
    """Fault in the first ``length`` bytes with one thread per CPU (at most 4): faulting in is
    CPU work (zeroing pages, and the hypervisor's own faults), and before the halt the CPUs are
    the target's and ours alike. Stops at ``deadline`` (time.monotonic()) with what it has, so
    that faulting in never delays the halt by more than that, however slow fresh memory is
    (where the hypervisor has taken it back, 0.3-2 GB/s in one hour on one machine). Returns
    the bytes faulted in: a prefix of whole slices (the last one may be short)."""
    slices = [(off, min(SLICE, length - off)) for off in range(0, max(length, 0), SLICE)]
    n = max(1, min(os.cpu_count() or 1, 4, length // (4 * SLICE)))
    lock = threading.Lock()
    taken = 0  # slices handed out: all of them are faulted in once the threads are joined
    errors: list[BaseException] = []

    def one() -> None:
        nonlocal taken
        while True:
            with lock:
                if taken == len(slices) or errors or (deadline is not None and time.monotonic() >= deadline):
                    return
                off, ln = slices[taken]
                taken += 1
            try:
                region.populate(off, ln)
            except BaseException as err:  # pragma: no cover (out of memory)
                with lock:
                    errors.append(err)
                return

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n - 1)]
    for t in threads:
        t.start()
    one()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(ln for _, ln in slices[:taken])


class Pool:
    """The warm chunks plus, for one dump, up to ``extra`` bytes of staging.

    ``head`` bytes of the staging are faulted in now (before the halt), or as many of them as
    can be until ``deadline`` (time.monotonic()); the rest only when the
    reader is about to run out of free chunks, by a background thread started by :meth:`feed`,
    chunk by chunk, each handed to the copier as soon as it is ready, while the target is halted
    and the reader is filling the others. So the reader gets chunks at the writers' rate plus
    the rate fresh memory can be faulted in, and only the staging the writers could not recycle
    in time is ever allocated. :meth:`stop` ends it (the reading is done).
    """

    LOW = 3  # free chunks below which the next one is faulted in

    def __init__(self, extra: int = 0, head: int | None = None, deadline: float | None = None) -> None:
        self.region: Region | None = None
        self.own: Region | None = None  # instead of the warm chunks, lent to another Pool
        lent = _Warm.lend()
        self.borrowed = lent is not None
        if lent is None:
            self.own = Region(2 * CHUNK)
            lent = self.own.chunks()
        self.chunks = lent
        self.ready = list(self.chunks)
        self._stop = threading.Event()
        self._need = threading.Event()
        self._thread: threading.Thread | None = None
        self._later: list[int] = []
        self.exhausted = False  # no more staging to come
        self.head_bytes = 0  # staging faulted in here, before the halt
        self.head_seconds = 0.0  # and how long that took
        n = -(-max(extra, 0) // CHUNK)
        if n:
            h = n if head is None else min(-(-max(head, 0) // CHUNK), n)
            self.region = Region(n * CHUNK, populate=0)
            t0 = time.monotonic()
            self.head_bytes = _populate_parallel(self.region, h * CHUNK, deadline)
            self.head_seconds = time.monotonic() - t0
            h = self.head_bytes // CHUNK
            fresh = self.region.chunks()
            self.chunks = self.chunks + fresh
            self.ready += fresh[:h]
            self._later = fresh[h:]
        self.exhausted = not self._later

    @property
    def size(self) -> int:
        return len(self.chunks) * CHUNK

    @property
    def populated(self) -> int:
        """Bytes of staging faulted in so far, the warm chunks not counted."""
        return self.region.populated if self.region else 0

    def feed(self, free: queue.SimpleQueue[int]) -> None:
        """Start populating the rest on demand, putting each chunk into ``free`` when ready."""
        if not self._later or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._populate, args=(free,), name="snapd-populate", daemon=True
        )
        self._thread.start()

    def low(self, free: queue.SimpleQueue[int]) -> None:
        """The reader's hint: call after taking a chunk."""
        if self._later and free.qsize() < self.LOW:
            self._need.set()

    def _populate(self, free: queue.SimpleQueue[int]) -> None:
        region = self.region
        assert region is not None
        later = iter(self._later)
        while True:
            self._need.wait()
            if self._stop.is_set():
                return
            self._need.clear()
            while free.qsize() < 2 * self.LOW:
                c = next(later, None)
                if c is None or self._stop.is_set():
                    self.exhausted = True
                    return
                try:
                    region.populate(c - region.addr, CHUNK)
                except BaseException:
                    self.exhausted = True  # out of memory, or closed: the reader makes do
                    return
                free.put(c)

    def release(self, chunk: int) -> bool:
        """Give a staging chunk's memory back (not a warm one's); False if it is not staging."""
        r = self.region
        if r is None or not r.addr <= chunk < r.addr + r.size:
            return False
        r.release(chunk, CHUNK)
        return True

    def stop(self) -> None:
        self._stop.set()
        self._need.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Idempotent; after the copier using the chunks has stopped."""
        self.stop()
        for r in (self.region, self.own):
            if r is not None:
                r.close()
        self.region = self.own = None
        if self.borrowed:
            self.borrowed = False
            _Warm.give_back()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
