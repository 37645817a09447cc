"""write_core(): halt, snapshot the process state, write the ELF core, resume, publish.

The file is built in a temp file in the destination directory (``.snapd-partial.*``, mode 0600,
O_EXCL|O_NOFOLLOW) and linked into place only when complete: a crash leaves a partial file that
no reader mistakes for a core. The target is resumed on every path, before the slow tail
(fsync, rename) so the freeze covers only what must be consistent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from snapd import procfs
from snapd.content import ContentSpec, parse_spec
from snapd.core import elf, notes, select
from snapd.core.elf import PF, PT, Phdr
from snapd.core.info import CoreInfo
from snapd.core.memory import MemReader, Reader, VmReader, copy_runs
from snapd.core.pages import PageMap
from snapd.core.select import Amount
from snapd.errors import OutputError, SnapshotError, TargetGone
from snapd.freeze import Halted, halt
from snapd.freeze.halt import DEFAULT_TIMEOUT
from snapd.procfs import Mapping

PARTIAL_PREFIX = ".snapd-partial."
SNAPSHOT_MODES = ("frozen", "fork")

#: progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]


@dataclass
class Segment:
    """One PT_LOAD: a mapping, its class, how much of it is in the file, and where."""

    mapping: Mapping
    cls: str
    amount: Amount
    offset: int = 0
    filesz: int = 0
    #: (start, end) address ranges to copy; everything else inside filesz stays a hole
    runs: list[tuple[int, int]] = field(default_factory=list)

    @property
    def flags(self) -> int:
        m = self.mapping
        return (PF.R if m.readable else 0) | (PF.W if m.writable else 0) | (PF.X if m.executable else 0)

    def phdr(self) -> Phdr:
        m = self.mapping
        return Phdr(PT.LOAD, self.flags, self.offset, m.start, self.filesz, m.size, elf.PAGE)


@dataclass
class Snapshot:
    """The process as it was while halted: everything but the memory contents."""

    pid: int
    threads: list[notes.ThreadRegs]
    proc: notes.ProcessInfo
    auxv: bytes
    mappings: list[Mapping]
    coredump_filter: int
    exe: str
    wall_time: float


def capture(h: Halted, state: str, current_tid: int | None = None) -> Snapshot:
    """Read registers, signal state and /proc of a halted process."""
    pid = h.pid
    tids = h.tids
    if current_tid in tids:
        tids.remove(current_tid)
        tids.insert(0, current_tid)
    threads = []
    for tid in tids:
        try:
            threads.append(notes.capture_thread(pid, tid, h.threads[tid].pending_signal))
        except OSError as err:
            if err.errno == errno.ESRCH and tid != pid:
                continue  # killed while halted (SIGKILL is not stoppable): leave it out
            raise TargetGone(pid, "the snapshot") from err
    if not threads:
        raise TargetGone(pid, "the snapshot")
    st = procfs.stat(pid)
    status = procfs.status(pid)
    proc = notes.ProcessInfo(
        pid=pid,
        ppid=st.ppid,
        pgrp=st.pgrp,
        sid=st.session,
        comm=st.comm,
        state=state,
        flags=st.flags,
        nice=st.nice,
        uid=int(status.get("Uid", "0").split()[0]),
        gid=int(status.get("Gid", "0").split()[0]),
        cmdline=procfs.cmdline(pid),
        cutime=st.cutime,
        cstime=st.cstime,
    )
    return Snapshot(
        pid=pid,
        threads=threads,
        proc=proc,
        auxv=procfs.auxv(pid),
        mappings=procfs.smaps(pid),
        coredump_filter=procfs.coredump_filter(pid),
        exe=procfs.exe(pid),
        wall_time=h.wall_time,
    )


def plan(snap: Snapshot, spec: ContentSpec, mem: MemReader, pagemap: PageMap) -> list[Segment]:
    """Decide every segment's class, amount and the runs of pages worth copying."""
    stack_ptrs = {t.sp for t in snap.threads}
    is_elf = select.elf_checker(mem.read)
    segs = []
    for m in snap.mappings:
        cls = select.classify(snap.pid, m, stack_ptrs)
        amount = select.decide(spec, m, cls, snap.coredump_filter, is_elf)
        seg = Segment(m, cls, amount)
        if amount == Amount.ELFHDR:
            seg.filesz = elf.PAGE
            seg.runs = [(m.start, m.start + elf.PAGE)]
        elif amount == Amount.WHOLE:
            seg.filesz = m.size
            seg.runs = _runs(snap.pid, m, cls, pagemap)
        segs.append(seg)
    return segs


def _runs(pid: int, m: Mapping, cls: str, pagemap: PageMap) -> list[tuple[int, int]]:
    if m.path in select.UNREADABLE_SPECIAL:
        return []  # all holes, as in a kernel core
    if m.path in select.ALWAYS_DUMP:
        return [(m.start, m.end)]  # [vdso], [vsyscall]: tiny, and beyond pagemap's reach
    if not m.file_backed:
        return pagemap.present(m.start, m.end)  # absent anonymous pages are zeros: holes
    if cls == "shm":
        return _shmem_data(pid, m)
    return [(m.start, m.end)]


def _shmem_data(pid: int, m: Mapping) -> list[tuple[int, int]]:
    """Ranges of a shmem/tmpfs mapping that hold data (SEEK_DATA/SEEK_HOLE on the object).

    Reading a never-written part of a shared mapping would allocate memory for it (shmem_fault);
    lseek(2) SEEK_DATA tells which parts exist without touching them.
    """
    try:
        fd = os.open(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return [(m.start, m.end)]
    runs: list[tuple[int, int]] = []
    try:
        pos, end = m.offset, m.offset + m.size
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:
                    break  # no data after pos
                return [(m.start, m.end)]
            if data >= end:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            s = m.start + (data - m.offset) // elf.PAGE * elf.PAGE
            e = m.start + elf.page_up(hole - m.offset)
            runs.append((s, min(e, m.end)))
            pos = hole
    finally:
        os.close(fd)
    return runs


def layout(
    snap: Snapshot, segs: list[Segment], spec: ContentSpec, mode: str
) -> tuple[bytes, bytes, int, int]:
    """Assign file offsets; return (ELF + program headers, notes, file size, section header offset)."""
    info: dict[str, object] = {
        "version": 1,
        "content": str(spec),
        "snapshot": mode,
        "time": snap.wall_time,
        "classes": [s.cls for s in segs],
        "shared_live": [],
    }
    note_data = notes.build(snap.threads, snap.proc, snap.auxv, snap.mappings, info)
    phnum = 1 + len(segs)
    notes_off = elf.EHDR_SIZE + elf.PHDR_SIZE * phnum
    off = elf.page_up(notes_off + len(note_data))
    for s in segs:
        s.offset = off
        off += s.filesz
    total = off
    shoff = 0
    if phnum >= elf.PN_XNUM:
        shoff = total
        total += elf.SHDR_SIZE
    phdrs = [Phdr(PT.NOTE, 0, notes_off, 0, len(note_data), 0, 4)] + [s.phdr() for s in segs]
    head = elf.ehdr(phnum, shoff) + b"".join(p.pack() for p in phdrs)
    return head, note_data, total, shoff


def _create_temp(path: str) -> tuple[int, str]:
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f"{PARTIAL_PREFIX}{os.path.basename(path)}.{secrets.token_hex(4)}")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        os.stat(d)  # EACCES on a parent is "permission denied", not "no such directory"
        return os.open(tmp, flags, 0o600), tmp
    except OSError as err:
        raise OutputError(path, err) from err


def _publish(fd: int, tmp: str, path: str, replace: bool, sync: bool) -> None:
    try:
        if sync:
            os.fsync(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path, follow_symlinks=False)  # never overwrites, never follows
            os.unlink(tmp)
        if sync:
            dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as err:
        raise OutputError(path, err) from err


def _reserve(fd: int, path: str, segs: list[Segment], total: int) -> None:
    """Size the file (sparse) and reserve blocks for every run we will copy.

    Reserving first turns "disk full" into a clean error before any copying, instead of a
    SIGBUS when a write through the mapping finds no block (mm/filemap.c, page_mkwrite).
    """
    try:
        os.ftruncate(fd, total)
    except OSError as err:
        raise OutputError(path, err) from err
    from snapd.freeze.ptrace import fallocate

    for s in segs:
        for a, b in s.runs:
            try:
                fallocate(fd, s.offset + (a - s.mapping.start), b - a)
            except OSError as err:
                if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                    return
                raise OutputError(path, err) from err


def _copy_plan(segs: Iterable[Segment]) -> list[tuple[int, int, int]]:
    """(file offset, address, length) of every run, in file order."""
    return [(s.offset + (a - s.mapping.start), a, b - a) for s in segs for a, b in s.runs]


def write_core(
    pid: int,
    path: str,
    *,
    content: str | ContentSpec = "default",
    snapshot: str = "frozen",
    replace: bool = True,
    current_tid: int | None = None,
    halted: Halted | None = None,
    progress: Progress | None = None,
    sync: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> CoreInfo:
    """Write an ELF core of live process ``pid`` to ``path`` and return what was written.

    ``halted``: a target the caller already halted (the daemon's ``stop: kernel``); the caller
    then resumes it. Otherwise the target is halted here and resumed on every path.
    """
    spec = content if isinstance(content, ContentSpec) else parse_spec(content)
    if snapshot not in SNAPSHOT_MODES:
        raise SnapshotError(f"unknown snapshot mode '{snapshot}'; use one of: {', '.join(SNAPSHOT_MODES)}")
    if snapshot == "fork":
        raise SnapshotError(
            "--snapshot fork is not available yet (it lands with the fork-snapshot issue); "
            "use --snapshot frozen"
        )
    path = os.path.abspath(path)
    t0 = time.monotonic()
    pre = halted is None and _prestate(pid)
    fd, tmp = _create_temp(path)
    published = False
    try:
        h = halted or halt(pid, timeout=timeout)
        try:
            info = _dump(h, fd, path, spec, pre or "R", current_tid, progress)
        finally:
            if halted is None:
                h.resume()
        freeze = h.freeze_seconds
        _publish(fd, tmp, path, replace, sync)
        published = True
        st = os.fstat(fd)
    finally:
        os.close(fd)
        if not published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    segs, threads, copied, comm, exe = info
    return CoreInfo(
        pid=pid,
        path=path,
        comm=comm,
        exe=exe,
        threads=threads,
        mappings=len(segs),
        dumped_mappings=sum(1 for s in segs if s.filesz),
        apparent_size=st.st_size,
        disk_bytes=st.st_blocks * 512,
        memory_bytes=copied,
        content=str(spec),
        snapshot=snapshot,
        started=h.wall_time,
        freeze_seconds=freeze,
        elapsed_seconds=time.monotonic() - t0,
    )


def _prestate(pid: int) -> str:
    from snapd.freeze import precheck

    return precheck(pid).state


def _dump(
    h: Halted,
    fd: int,
    path: str,
    spec: ContentSpec,
    state: str,
    current_tid: int | None,
    progress: Progress | None,
) -> tuple[list[Segment], int, int, str, str]:
    pid = h.pid
    snap = capture(h, state, current_tid)
    mem = MemReader(pid)
    try:
        with PageMap(pid) as pagemap:
            segs = plan(snap, spec, mem, pagemap)
        head, note_data, total, shoff = layout(snap, segs, spec, "frozen")
        _reserve(fd, path, segs, total)
        try:
            os.pwrite(fd, head, 0)
            os.pwrite(fd, note_data, len(head))
            if shoff:
                os.pwrite(fd, elf.xnum_shdr(1 + len(segs)), shoff)
        except OSError as err:
            raise OutputError(path, err) from err
        # process_vm_readv for what it can read; /proc/PID/mem for PROT_NONE mappings it cannot.
        # (/proc/PID/mem offsets are signed for us: [vsyscall] up at 0xffffffffff600000 is not.)
        forced_segs = [s for s in segs if not s.mapping.readable and s.mapping.start < 1 << 63]
        readable = _copy_plan(s for s in segs if s not in forced_segs)
        forced = _copy_plan(forced_segs)
        want = sum(r[2] for r in readable) + sum(r[2] for r in forced)
        cb = (lambda done: progress(done, want)) if progress else None
        reader: Reader = VmReader(pid)
        try:
            copied, _ = copy_runs(reader, fd, readable, cb)
            if forced:
                copied += copy_runs(mem, fd, forced)[0]
        except OSError as err:
            raise OutputError(path, err) from err
    finally:
        mem.close()
    return segs, len(snap.threads), copied, snap.proc.comm, snap.exe
