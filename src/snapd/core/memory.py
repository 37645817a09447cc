"""Reading target memory, and the file-mapping copy path.

Two readers: ``process_vm_readv`` (:class:`VmReader`, up to IOV_MAX runs per system call) and
``/proc/PID/mem`` (:class:`MemReader`: PROT_NONE pages too, and no page pinning). The staged copy
(:mod:`snapd.core.staging`) reads into warm chunks; :func:`copy_runs` reads straight into a
MAP_SHARED mapping of the output file instead (one copy, but each page a fresh page-cache page,
faulted in while reading). Where the output cannot be mapped shared (9p without a page cache,
FUSE in direct_io mode, a descriptor open for writing only: mmap(2) EINVAL, ENODEV, EACCES) it
reads each window into an anonymous buffer and pwrite(2)s it, found out at the first window and
said in :attr:`Copied.pwrite`. A run that fails part-way (a page that cannot be read: PROT_NONE
without FOLL_FORCE, beyond EOF of a file mapping, a guard page) leaves a one-page hole and the
copy goes on after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from snapd.errors import TargetGone
from snapd.procfs import PAGE_SIZE
from snapd.sys import mman
from snapd.sys.uio import IOV_MAX, process_vm_readv

WINDOW = 64 << 20  # bytes of output file mapped at a time

#: (local address, remote address, length)
Pair = tuple[int, int, int]


class Reader(Protocol):
    pid: int

    def copy(self, pairs: Sequence[Pair]) -> int:
        """Copy in order; return bytes copied before the first unreadable page."""
        ...

    def close(self) -> None: ...


class VmReader:
    """process_vm_readv(2): batches of up to IOV_MAX runs per system call."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def copy(self, pairs: Sequence[Pair]) -> int:
        try:
            return process_vm_readv(self.pid, list(pairs))
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise TargetGone(self.pid, "the dump") from err
            if err.errno in (errno.EFAULT, errno.EIO, errno.ENOMEM, errno.EPERM):
                return 0
            raise

    def close(self) -> None:
        pass


class MemReader:
    """/proc/PID/mem: reads PROT_NONE pages too (FOLL_FORCE), and does not pin pages.

    Used for mappings process_vm_readv cannot read, and for a forked snapshot child, where
    pinning would force a copy of every copy-on-write page (see docs/fork-snapshot.md).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise TargetGone(pid, "the dump") from err

    def copy(self, pairs: Sequence[Pair]) -> int:
        done = 0
        for laddr, raddr, length in pairs:
            if raddr + length > 1 << 63:
                # pread's offset is a signed off_t: [vsyscall] (0xffffffffff600000) is beyond it.
                n = VmReader(self.pid).copy([(laddr, raddr, length)])
                if n < length:
                    return done + n
                done += length
                continue
            view = memoryview((ctypes.c_char * length).from_address(laddr)).cast("B")
            pos = 0
            while pos < length:
                try:
                    n = os.preadv(self.fd, [view[pos:]], raddr + pos)
                except OSError as err:
                    if err.errno == errno.ESRCH:
                        raise TargetGone(self.pid, "the dump") from err
                    n = 0
                if n <= 0:
                    return done + pos
                pos += n
            done += length
        return done

    def __enter__(self) -> MemReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, addr: int, length: int) -> bytes | None:
        try:
            return os.pread(self.fd, length, addr)
        except OSError:
            return None

    def close(self) -> None:
        os.close(self.fd)


#: mmap(2) errors meaning "this file cannot be mapped shared and writable" (mm/mmap.c; 9p's
#: generic_file_readonly_mmap: EINVAL; fuse_file_mmap in direct_io mode: ENODEV; a descriptor
#: not open for reading: EACCES). Offsets and lengths here are page-aligned, so EINVAL is that.
NO_SHARED_MAP = (errno.EINVAL, errno.ENODEV, errno.EACCES, errno.EOPNOTSUPP)


class Copied(NamedTuple):
    copied: int  # bytes
    skipped: int  # pages left as holes (unreadable)
    pwrite: bool  # the output could not be mapped shared: written with pwrite(2)


def copy_runs(
    reader: Reader,
    fd: int,
    runs: Sequence[tuple[int, int, int]],
    progress: Callable[[int], None] | None = None,
    *,
    fallback: bool = True,
) -> Copied:
    """Copy ``runs`` of ``(file_offset, remote_addr, length)`` (page-aligned, any order) into
    a shared mapping of ``fd``, or, where the file cannot be mapped shared (``fallback``; else
    the OSError is raised), through a buffer and pwrite(2)."""
    # Windows are cut in file order, and each run is written at its offset from its window's
    # start: a run before that start, or an overlapping one, would be written outside the
    # mapping, into whatever lies there (duplicated runs once overwrote cached thread stacks
    # that way: pages._scan). Hence sorted here, and each window checked below.
    runs = sorted(runs)
    copied = skipped = 0
    bounce = 0  # the pwrite path's buffer (WINDOW bytes), once the mapping was refused
    i = 0
    while i < len(runs):
        # One window of the output file: as many runs as fit, the last one maybe split.
        wstart = runs[i][0] & ~(PAGE_SIZE - 1)
        wend = wstart + WINDOW
        batch: list[tuple[int, int, int]] = []
        while i < len(runs) and runs[i][0] < wend:
            off, addr, length = runs[i]
            if off + length > wend:
                cut = wend - off
                batch.append((off, addr, cut))
                runs = [*runs[: i + 1], (off + cut, addr + cut, length - cut), *runs[i + 1 :]]
                i += 1
                break
            batch.append(runs[i])
            i += 1
        span = batch[-1][0] + batch[-1][2] - wstart
        if any(off < wstart or off + length > wstart + span for off, _, length in batch):
            raise ValueError(f"copy_runs: overlapping runs in the output window at {wstart:#x}")
        if not bounce:
            try:
                base = mman.mmap_file(fd, wstart, span)
            except OSError as err:
                if not fallback or err.errno not in NO_SHARED_MAP:
                    raise
                bounce = mman.mmap_anon(WINDOW)
        try:
            if bounce:
                c, s = _pwrite_window(reader, fd, bounce, wstart, batch)
            else:
                try:
                    c, s = _copy_window(reader, base - wstart, batch)
                finally:
                    mman.munmap(base, span)
        except BaseException:
            if bounce:
                mman.munmap(bounce, WINDOW)
            raise
        copied += c
        skipped += s
        if progress:
            progress(copied)
    if bounce:
        mman.munmap(bounce, WINDOW)
    return Copied(copied, skipped, bool(bounce))


def _pwrite_window(
    reader: Reader, fd: int, buf: int, wstart: int, batch: list[tuple[int, int, int]]
) -> tuple[int, int]:
    """One window through ``buf``: each run zeroed (a page that cannot be read stays zero, as
    the hole of the mapped path reads), read, and written at its offset."""
    for off, _addr, length in batch:
        ctypes.memset(buf + off - wstart, 0, length)
    c, s = _copy_window(reader, buf - wstart, batch)
    for off, _addr, length in batch:
        data = (ctypes.c_char * length).from_address(buf + off - wstart)
        done = 0
        with memoryview(data).cast("B") as view:
            while done < length:
                done += os.pwrite(fd, view[done:], off + done)
    return c, s


def _copy_window(reader: Reader, delta: int, batch: list[tuple[int, int, int]]) -> tuple[int, int]:
    pairs: list[Pair] = [(off + delta, addr, length) for off, addr, length in batch]
    copied = skipped = 0
    j = 0
    while j < len(pairs):
        chunk = pairs[j : j + IOV_MAX]
        want = sum(p[2] for p in chunk)
        n = reader.copy(chunk)
        copied += n
        if n >= want:
            j += len(chunk)
            continue
        # Find the pair and page where the copy stopped; skip that page (a hole) and go on.
        for k, (laddr, raddr, length) in enumerate(chunk):
            if n < length:
                bad = n & ~(PAGE_SIZE - 1)
                copied -= n - bad  # a partial page is rewritten from its start next time
                rest = bad + PAGE_SIZE
                skipped += 1
                if rest < length:
                    pairs[j + k] = (laddr + rest, raddr + rest, length - rest)
                    j += k
                else:
                    j += k + 1
                break
            n -= length
    return copied, skipped


def open_direct(path: str) -> int | None:
    """A second descriptor on the temp file with O_DIRECT, or None where the FS has none."""
    with contextlib.suppress(OSError):
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_NOFOLLOW | os.O_CLOEXEC)
    return None
