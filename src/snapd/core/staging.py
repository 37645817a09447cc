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

The chunks are the process's few warm ones plus the dump's staging (:class:`snapd.core.pool.Pool`):
a head faulted in before the halt, the rest faulted in by a helper thread only when the reader is
about to run out, up to a budget. So the reader waits only when the staging is exhausted, the target
is resumed as soon as the last byte has been read (:meth:`Copier.read` returns), and the writers
finish after (:meth:`Copier.finish`).

A run that fails part-way (a page that cannot be read: PROT_NONE without FOLL_FORCE, beyond EOF
of a file mapping, a guard page) leaves a one-page hole and the copy goes on after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from snapd.core.memory import Pair, Reader
from snapd.core.pool import CHUNK, Pool
from snapd.core.priority import UNBOOST, Nice, boost
from snapd.procfs import PAGE_SIZE
from snapd.sys.fs import fallocate
from snapd.sys.uio import IOV_MAX

DIRECT_MIN = 1 << 20  # pieces at least this long are written with O_DIRECT by a direct writer
PARALLEL_MIN = 64 << 20  # copies at least this big get one thread per reader given
#: readers of a fork's child (/proc/PID/mem copies in the kernel, a page at a time, one CPU each)
READERS = max(1, min(int(os.environ.get("SNAPD_READERS", "2")), os.cpu_count() or 1))

#: (file offset, offset in the chunk, length)
Piece = tuple[int, int, int]


class Sink(str, Enum):
    DIRECT = "direct"
    BUFFERED = "buffered"


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
    head_bytes: int = 0  # of which before the halt (pool.Pool: at most until its deadline)
    head_seconds: float = 0.0  # and how long that took
    #: bytes the writers wrote while the reader ran, until it first had to wait for a chunk
    #: (or to its end), and over how long: how fast they drain beside a reader (in a halt, at
    #: the priorities the halt gives them), which sizes the next dump's staging
    drained_beside: int = 0
    beside_seconds: float = 0.0


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
        self._t_read = 0.0  # the first read began
        self._beside: tuple[int, float] | None = None  # (written, time) at the reader's first wait
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
        # its priority cannot be restored after, not at all (see priority.Nice).
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
                fallocate(self.fd, off, n)
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
        self._t_read = self._t_read or t0
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
        written, at = self._beside or (sum(self.written.values()), time.monotonic())
        self.stats.drained_beside, self.stats.beside_seconds = written, at - self._t_read
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
                if pos == CHUNK or len(pairs) == IOV_MAX:
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
        with self._lock:
            if self._beside is None:
                self._beside = (sum(self.written.values()), t)
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
        self.stats.head_bytes, self.stats.head_seconds = self.pool.head_bytes, self.pool.head_seconds
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
