"""The copy engine: target memory read into warm staging chunks, written out by writer threads.

The reader (the calling thread) copies runs of target memory into page-aligned 4 MiB chunks of
memory that is already faulted in, so that it runs at the speed of this machine's memory, not of
its page cache or its disk. Writer threads drain the filled chunks to the output file meanwhile,
each through its sink:

- ``direct``: O_DIRECT ``pwrite`` for pieces of at least 1 MiB (no page-cache page is allocated;
  smaller pieces, whose O_DIRECT writes would each wait for the disk, go buffered);
- ``buffered``: plain ``pwrite`` into the page cache.

Every writer takes the next filled chunk from one queue as soon as it is free, so when both
kinds run at once the bytes split between them in proportion to how fast each drains, measured
as it happens. While a target is halted (``hold``) buffered writers wait: they would compete
with the reader for a CPU and for fresh memory; O_DIRECT writers barely use either.

The chunks are the process's few warm ones plus the dump's staging (:class:`Pool`): a head
faulted in before the halt, the rest faulted in by a helper thread only when the reader is about
to run out, up to a budget. So the reader waits only when the staging is exhausted, the target
is resumed as soon as the last byte has been read (:meth:`Copier.read` returns), and the writers
finish after (:meth:`Copier.finish`).

A run that fails part-way (a page that cannot be read: PROT_NONE without FOLL_FORCE, beyond EOF
of a file mapping, a guard page) leaves a one-page hole and the copy goes on after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from snapd.core.memory import Pair, Reader
from snapd.freeze import ptrace as pt
from snapd.procfs import PAGE_SIZE

CHUNK = 4 << 20  # one staging chunk
DIRECT_MIN = 1 << 20  # pieces at least this long are written with O_DIRECT by a direct writer
WARM_CHUNKS = 6  # kept faulted in for the life of the process (the daemon dumps many times)
PARALLEL_MIN = 64 << 20  # copies at least this big get one thread per reader given
#: readers of a fork's child (/proc/PID/mem copies in the kernel, a page at a time, one CPU each)
READERS = max(1, min(int(os.environ.get("SNAPD_READERS", "2")), os.cpu_count() or 1))

#: (file offset, offset in the chunk, length)
Piece = tuple[int, int, int]


class Sink(str, Enum):
    DIRECT = "direct"
    BUFFERED = "buffered"


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


def _populate_parallel(region: Region, length: int) -> None:
    """Fault in the first ``length`` bytes with one thread per CPU (at most 4): faulting in is
    CPU work (zeroing pages, and the hypervisor's own faults), and before the halt the CPUs are
    the target's and ours alike."""
    n = max(1, min(os.cpu_count() or 1, 4, length // (16 * CHUNK)))
    if n == 1:
        region.populate(0, length)
        return
    per = -(-length // n // CHUNK) * CHUNK
    parts = [(i * per, min(per, length - i * per)) for i in range(n) if i * per < length]
    errors: list[BaseException] = []

    def one(off: int, ln: int) -> None:
        try:
            region.populate(off, ln)
        except BaseException as err:  # pragma: no cover (out of memory)
            errors.append(err)

    threads = [threading.Thread(target=one, args=p, daemon=True) for p in parts[1:]]
    for t in threads:
        t.start()
    one(*parts[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class Pool:
    """The warm chunks plus, for one dump, up to ``extra`` bytes of staging.

    ``head`` bytes of the staging are faulted in now (before the halt); the rest only when the
    reader is about to run out of free chunks, by a background thread started by :meth:`feed`,
    chunk by chunk, each handed to the copier as soon as it is ready, while the target is halted
    and the reader is filling the others. So the reader gets chunks at the writers' rate plus
    the rate fresh memory can be faulted in, and only the staging the writers could not recycle
    in time is ever allocated. :meth:`stop` ends it (the reading is done).
    """

    LOW = 3  # free chunks below which the next one is faulted in

    def __init__(self, extra: int = 0, head: int | None = None) -> None:
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
        n = -(-max(extra, 0) // CHUNK)
        if n:
            h = n if head is None else min(-(-max(head, 0) // CHUNK), n)
            self.region = Region(n * CHUNK, populate=0)
            _populate_parallel(self.region, h * CHUNK)
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


@dataclass
class Stats:
    """What one copy did: for `snapd gcore -v`, the bench and the calibration's self-check."""

    read_bytes: int = 0
    read_seconds: float = 0.0  # reading into staging, waits for free chunks included
    waited_seconds: float = 0.0  # of which waiting for a free chunk (the pool was exhausted)
    written: dict[str, int] | None = None  # bytes per sink
    write_seconds: float = 0.0  # first chunk queued to last chunk written
    skipped_pages: int = 0
    staging_used: int = 0  # bytes of staging faulted in (the warm chunks not counted)


class Copier:
    """Writer threads draining a pool to ``fd`` (buffered) and ``dfd`` (O_DIRECT, optional)."""

    def __init__(
        self, fd: int, dfd: int | None, sinks: Sequence[Sink], pool: Pool, *, hold: bool = False
    ) -> None:
        self.fd = fd
        self.dfd = dfd
        self.pool = pool
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for c in pool.ready:
            self.free.put(c)
        self.work: queue.SimpleQueue[tuple[int, list[Piece]] | None] = queue.SimpleQueue()
        self.errors: list[BaseException] = []
        self.written = {s.value: 0 for s in Sink}
        self.stats = Stats(written=self.written)
        self._t_first = 0.0
        self._t_last = 0.0
        self._lock = threading.Lock()
        self._pending = 0  # chunks queued and not yet written
        self._reading_done = False  # from then on staging chunks are given back once written
        self._reserve = True
        # With ``hold`` (a halted target) the gate stays closed until finish() (after the resume)
        # or the staging running out; meanwhile writers run at the priorities of _writer().
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        if not sinks:
            sinks = [Sink.BUFFERED]
        self.threads = [
            threading.Thread(target=self._writer, args=(s,), name=f"snapd-{s.value}", daemon=True)
            for s in sinks
        ]
        for t in self.threads:
            t.start()
        pool.feed(self.free)

    # --- writers --------------------------------------------------------------------------

    def _writer(self, sink: Sink) -> None:
        # While the target is halted (the gate closed): an O_DIRECT writer runs at the reader's
        # priority; a buffered one at nice +10 (only on CPU time nobody else wants), or, where
        # its priority cannot be restored after, not at all (see Nice).
        nice: Nice | None = None
        if not self.gate.is_set():
            nice = boost() if sink is Sink.DIRECT else Nice(UNBOOST)
            if sink is Sink.BUFFERED and not nice.active:
                self.gate.wait()
        while (item := self.work.get()) is not None:
            if nice is not None and self.gate.is_set():
                nice.stop()
                nice = None
            chunk, pieces = item
            try:
                if not self.errors:
                    for off, pos, n in pieces:
                        used = self._write(sink, chunk + pos, off, n)
                        with self._lock:
                            self.written[used.value] += n
                            self._t_last = time.monotonic()
            except BaseException as err:  # recorded, never lost: the reader must not wait forever
                self.errors.append(err)
            finally:
                with self._lock:
                    self._pending -= 1
                if not (self._reading_done and self.pool.release(chunk)):
                    self.free.put(chunk)

    def _write(self, sink: Sink, addr: int, off: int, n: int) -> Sink:
        if self._reserve:
            # Blocks reserved before the data is written (fallocate mode 0), as for the mapped
            # path: a full disk fails here, cleanly; done by the writers, not the halted reader.
            try:
                pt.fallocate(self.fd, off, n)
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._reserve = False
        view = memoryview((ctypes.c_char * n).from_address(addr)).cast("B")
        if sink is Sink.DIRECT and self.dfd is not None and n >= DIRECT_MIN:
            try:
                _pwrite_all(self.dfd, view, off)
                return Sink.DIRECT
            except OSError as err:
                if err.errno != errno.EINVAL:  # a file system refusing this O_DIRECT write
                    raise
        _pwrite_all(self.fd, view, off)
        return Sink.BUFFERED

    # --- the reader -----------------------------------------------------------------------

    def read(
        self,
        reader: Reader | Sequence[Reader],
        runs: Sequence[tuple[int, int, int]],
        progress: Callable[[int], None] | None = None,
        *,
        boosted: bool = False,
    ) -> int:
        """Copy ``runs`` of (file offset, address, length) into chunks and queue them; with
        several readers, one thread each, sharing the runs (``boosted``: at the reader's
        priority, as the calling thread is while a target is halted).

        Returns when every byte has been read (not written): the source may change from then on.
        """
        readers = [reader] if not isinstance(reader, Sequence) else list(reader)
        t0 = time.monotonic()
        base = self.stats.read_bytes
        shares = _shares(runs, len(readers)) if sum(r[2] for r in runs) >= PARALLEL_MIN else [list(runs)]
        errors: list[BaseException] = []
        waits = [0.0] * len(shares)

        def one(i: int) -> None:
            nice = boost() if boosted and i else None
            try:
                waits[i] = self._read_share(readers[i], shares[i], progress if i == 0 else None, base)
            except BaseException as err:
                errors.append(err)
            finally:
                if nice is not None:
                    nice.stop()

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(1, len(shares))]
        for t in threads:
            t.start()
        one(0)
        for t in threads:
            t.join()
        self.stats.read_seconds += time.monotonic() - t0
        self.stats.waited_seconds += max(waits)
        if errors:
            raise errors[0]
        if self.errors:
            raise self.errors[0]
        return self.stats.read_bytes - base

    def _read_share(
        self,
        reader: Reader,
        runs: Sequence[tuple[int, int, int]],
        progress: Callable[[int], None] | None,
        base: int,
    ) -> float:
        """One reader's share; returns the time it waited for free chunks."""
        waited = 0.0
        chunk = 0
        pos = 0
        pairs: list[Pair] = []
        pieces: list[Piece] = []
        for off, addr, length in runs:
            while length > 0:
                if not chunk:
                    chunk, w = self._take()
                    waited += w
                    pos = 0
                n = min(length, CHUNK - pos)
                pairs.append((chunk + pos, addr, n))
                pieces.append((off, pos, n))
                pos += n
                off += n
                addr += n
                length -= n
                if pos == CHUNK or len(pairs) == pt.IOV_MAX:
                    self._fill(reader, chunk, pairs, pieces)
                    if progress:
                        progress(self.stats.read_bytes - base)
                    chunk, pairs, pieces = 0, [], []
                if self.errors:
                    return waited
        if chunk:
            self._fill(reader, chunk, pairs, pieces)
        return waited

    def _take(self) -> tuple[int, float]:
        """A free chunk, and how long it took to get one."""
        try:
            c = self.free.get_nowait()
            self.pool.low(self.free)
            return c, 0.0
        except queue.Empty:
            self.pool.low(self.free)
        t = time.monotonic()
        while True:
            if self.pool.exhausted:
                self.gate.set()  # out of staging: every writer must help now
            if self.errors:
                raise self.errors[0]
            if not any(t.is_alive() for t in self.threads):
                raise OSError(errno.EIO, "the writer threads are gone")
            try:
                c = self.free.get(timeout=0.005)
                break
            except queue.Empty:
                continue
        return c, time.monotonic() - t

    def _fill(self, reader: Reader, chunk: int, pairs: list[Pair], pieces: list[Piece]) -> None:
        """Read ``pairs`` (one chunk's worth); queue the pieces that were read."""
        done: list[Piece] = []
        j = 0
        while j < len(pairs):
            n = reader.copy(pairs[j:])
            for k in range(j, len(pairs)):
                laddr, raddr, length = pairs[k]
                off, pos, _ = pieces[k]
                if n >= length:
                    done.append(pieces[k])
                    n -= length
                    continue
                # The copy stopped in this pair: keep its whole pages, skip one, go on after it.
                good = n & ~(PAGE_SIZE - 1)
                if good:
                    done.append((off, pos, good))
                with self._lock:
                    self.stats.skipped_pages += 1
                rest = good + PAGE_SIZE
                if rest < length:
                    pairs[k] = (laddr + rest, raddr + rest, length - rest)
                    pieces[k] = (off + rest, pos + rest, length - rest)
                    j = k
                else:
                    j = k + 1
                break
            else:
                j = len(pairs)
        got = sum(p[2] for p in done)
        with self._lock:
            self.stats.read_bytes += got
        if got:
            self._queue(chunk, done)
        else:
            self.free.put(chunk)

    def put(self, chunk: int, pieces: list[Piece]) -> None:
        """Queue a chunk filled by other means (the calibration's prepared chunks)."""
        self._queue(chunk, pieces)

    def _queue(self, chunk: int, pieces: list[Piece]) -> None:
        if not self._t_first:
            self._t_first = time.monotonic()
        with self._lock:
            self._pending += 1
        self.work.put((chunk, pieces))

    # --- the end --------------------------------------------------------------------------

    def wait(self, limit: float) -> bool:
        """Wait up to ``limit`` seconds for the queue to drain; False if it had not."""
        end = time.monotonic() + limit
        while self._pending:
            if time.monotonic() > end:
                return False
            time.sleep(0.002)
        return True

    def finish(self, progress: Callable[[int], None] | None = None) -> Stats:
        """Wait for the writers; raise the first write error. Idempotent."""
        self.pool.stop()  # the reading is over: no more staging
        self._reading_done = True
        self.stats.staging_used = self.pool.populated
        self.gate.set()
        if self.threads:
            for _ in self.threads:
                self.work.put(None)
            for t in self.threads:
                while t.is_alive():
                    t.join(0.2)
                    if progress:
                        progress(sum(self.written.values()))
            self.threads = []
        if self._t_first:
            self.stats.write_seconds = max(self._t_last - self._t_first, 0.0)
        if self.errors:
            raise self.errors[0]
        return self.stats

    def close(self) -> None:
        """Stop the writers whatever happened (an abandoned dump): queued chunks are dropped."""
        if not self.threads:
            return
        self.errors.append(OSError(errno.ECANCELED, "copy abandoned"))  # writers skip the rest
        with contextlib.suppress(OSError):
            self.finish()


BOOST = -10  # nice value of the reader and O_DIRECT writers while a target is halted
UNBOOST = 10  # nice value of buffered writers while a target is halted


class Nice:
    """Run the calling thread at nice ``value`` while a target is halted; :meth:`stop`
    (idempotent) restores the old value, as soon as the target runs again.

    On a busy machine the copy out of a halted target is CPU-bound (process_vm_readv copies in
    the kernel) and competes with everything else, while the target, halted, uses nothing: the
    freeze is shortened by giving the reader (and the O_DIRECT writers, which need little CPU
    but promptly) the target's share, nice -10, and by letting buffered writers, which compete
    with the reader for a CPU and for fresh memory, have only what nobody else wants, nice +10.
    setpriority(2) on a thread id affects only that thread. Lowering a nice value needs
    CAP_SYS_NICE, so without it nothing changes (a raised value could not be restored).
    """

    def __init__(self, value: int) -> None:
        self.tid = threading.get_native_id()
        self.old: int | None = None
        if not _may_renice():
            return
        with contextlib.suppress(OSError):
            old = os.getpriority(os.PRIO_PROCESS, self.tid)
            if old != value:
                os.setpriority(os.PRIO_PROCESS, self.tid, value)
                self.old = old

    @property
    def active(self) -> bool:
        return self.old is not None

    def stop(self) -> None:
        if self.old is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.tid, self.old)
            self.old = None


def boost() -> Nice:
    """The reader's priority while a target is halted."""
    return Nice(BOOST)


@functools.cache
def _may_renice() -> bool:
    """CAP_SYS_NICE (bit 23) in the effective set (capabilities(7))."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 23 & 1)
    except (OSError, ValueError):
        pass
    return False


def _shares(runs: Sequence[tuple[int, int, int]], n: int) -> list[list[tuple[int, int, int]]]:
    """``runs`` cut into ``n`` shares of about as many bytes, a run split at a chunk boundary."""
    if n < 2:
        return [list(runs)]
    total = sum(r[2] for r in runs)
    per = -(-total // n // CHUNK) * CHUNK
    out: list[list[tuple[int, int, int]]] = [[]]
    room = per
    for off, addr, length in runs:
        while length > 0:
            if room == 0 and len(out) < n:
                out.append([])
                room = per
            take = length if len(out) == n else min(length, room)
            out[-1].append((off, addr, take))
            off, addr, length, room = off + take, addr + take, length - take, max(room - take, 0)
    return [s for s in out if s]


def _pwrite_all(fd: int, view: memoryview, off: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], off + done)
