"""write_core(): halt, snapshot the process state, write the ELF core, resume, publish.

The file is built in a temp file in the destination directory (``.snapd-partial.*``, mode 0600,
O_EXCL|O_NOFOLLOW) and linked into place only when complete: a crash leaves a partial file that
no reader mistakes for a core. The target is resumed on every path, before the slow tail
(fsync, rename) so the freeze covers only what must be consistent.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from snapd import procfs
from snapd.atomicfile import AtomicFile
from snapd.content import DEFAULT_CONTENT, ContentSpec, SnapshotMode, parse_spec
from snapd.core import elf, fork, notes, select
from snapd.core.elf import PF, PT, Phdr
from snapd.core.info import CoreInfo
from snapd.core.memory import (
    DIRECT_MIN,
    MemReader,
    Reader,
    VmReader,
    copy_direct,
    copy_runs,
    open_direct,
    warm_buffers,
)
from snapd.core.pages import PageMap
from snapd.core.select import Amount
from snapd.core.snapshot import Snapshot, capture
from snapd.errors import OutputError, SnapdError, SnapshotError, TargetGone, Zombie
from snapd.freeze import Halted, halt, precheck
from snapd.freeze.halted import DEFAULT_TIMEOUT
from snapd.freeze.inject import signals_held
from snapd.procfs import Mapping
from snapd.sys.fs import fallocate

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


def plan(snap: Snapshot, spec: ContentSpec, mem: MemReader) -> list[Segment]:
    """Decide every segment's class and how much of it goes in the file (no runs yet)."""
    stack_ptrs = {t.sp for t in snap.threads}
    is_elf = select.elf_checker(mem.read, snap.pid)
    segs = []
    for m in snap.mappings:
        cls = select.classify(snap.pid, m, stack_ptrs)
        amount = select.decide(spec, m, cls, snap.coredump_filter, is_elf)
        filesz = {Amount.NONE: 0, Amount.ELFHDR: elf.PAGE, Amount.WHOLE: m.size}[amount]
        segs.append(Segment(m, cls, amount, filesz=filesz))
    return segs


def fill_runs(pid: int, segs: Iterable[Segment]) -> None:
    """Find the runs worth copying: present pages of anonymous memory, data of shmem objects."""
    with PageMap(pid) as pagemap:
        for seg in segs:
            m = seg.mapping
            if seg.amount == Amount.ELFHDR:
                seg.runs = [(m.start, m.start + elf.PAGE)]
            elif seg.amount == Amount.WHOLE:
                seg.runs = _runs(pid, m, seg.cls, pagemap)


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
    snap: Snapshot, segs: list[Segment], spec: ContentSpec, mode: SnapshotMode, live: list[int]
) -> tuple[bytes, bytes, int, int]:
    """Assign file offsets; return (ELF + program headers, notes, file size, section header offset)."""
    info: dict[str, object] = {
        "version": 1,
        "content": str(spec),
        "snapshot": mode.value,
        "time": snap.wall_time,
        "start_time": snap.start_time,
        "classes": [s.cls for s in segs],
        "shared_live": live,
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


class CoreFile(AtomicFile):
    """The temp file a core is built in (:mod:`snapd.atomicfile`), published only when complete;
    a second descriptor with O_DIRECT for the big runs."""

    def __init__(self, path: str) -> None:
        self.dfd: int | None = None
        warm_buffers()  # fault them in now, not while the target is halted
        try:
            os.stat(os.path.dirname(path) or ".")  # EACCES on a parent: "permission denied"
            super().__init__(path)
        except OSError as err:
            raise OutputError(path, err) from err
        try:
            self.dfd = open_direct(self.tmp)
        except BaseException:  # even SIGTERM here must not leave the temp file behind
            self.close()
            raise

    def write_headers(self, head: bytes, note_data: bytes, total: int, shoff: int, nsegs: int) -> None:
        try:
            os.ftruncate(self.fd, total)  # sparse: only what we copy takes blocks
            os.pwrite(self.fd, head, 0)
            os.pwrite(self.fd, note_data, len(head))
            if shoff:
                os.pwrite(self.fd, elf.xnum_shdr(1 + nsegs), shoff)
        except OSError as err:
            raise OutputError(self.path, err) from err

    def reserve(self, runs: list[tuple[int, int, int]]) -> None:
        """Reserve blocks for every run we will copy (fallocate mode 0).

        This turns "disk full" into a clean error before any copying, instead of a SIGBUS when
        a write through the mapping finds no block (mm/filemap.c, page_mkwrite).
        """
        for off, _addr, length in runs:
            try:
                fallocate(self.fd, off, length)
            except OSError as err:
                if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                    return
                raise OutputError(self.path, err) from err

    def copy(
        self, reader: Reader, runs: list[tuple[int, int, int]], progress: Callable[[int], None] | None
    ) -> int:
        """Copy ``runs`` of (file offset, address, length): big ones through O_DIRECT, the rest
        (and whatever O_DIRECT could not read) through a mapping of the file."""
        self.reserve(runs)
        big = [r for r in runs if r[2] >= DIRECT_MIN] if self.dfd is not None else []
        small = [r for r in runs if r[2] < DIRECT_MIN] if big else list(runs)
        try:
            done = 0
            if big and self.dfd is not None:
                done, leftovers = copy_direct(reader, self.dfd, big, progress)
                small = sorted(small + leftovers)
            base = done
            cb = (lambda n: progress(base + n)) if progress else None
            return done + copy_runs(reader, self.fd, small, cb)
        except OSError as err:
            raise OutputError(self.path, err) from err

    def publish(self, *, replace: bool = True, sync: bool = True) -> os.stat_result:
        try:
            return super().publish(replace=replace, sync=sync)
        except OSError as err:
            raise OutputError(self.path, err) from err

    def close(self) -> None:
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None
        super().close()


def copy_plan(segs: Iterable[Segment]) -> list[tuple[int, int, int]]:
    """(file offset, address, length) of every run, in file order."""
    return [(s.offset + (a - s.mapping.start), a, b - a) for s in segs for a, b in s.runs]


def _forced(s: Segment) -> bool:
    """PROT_NONE mappings need /proc/PID/mem (FOLL_FORCE); process_vm_readv cannot read them."""
    return not s.mapping.readable


@dataclass
class _Result:
    segs: list[Segment]
    threads: int
    copied: int
    comm: str
    exe: str
    mode: SnapshotMode
    fallback: str


def write_core(
    pid: int,
    path: str,
    *,
    content: ContentSpec | str = DEFAULT_CONTENT,
    snapshot: SnapshotMode | str = SnapshotMode.FROZEN,
    replace: bool = True,
    current_tid: int | None = None,
    halted: Halted | None = None,
    progress: Progress | None = None,
    sync: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> CoreInfo:
    """Write an ELF core of live process ``pid`` to ``path`` and return what was written.

    ``content`` and ``snapshot`` may be given as text (``snapd gcore``'s ``-c`` and ``--snapshot``,
    parsed here) or parsed. ``snapshot``: frozen halts the target for the whole copy; fork halts
    it only to fork a copy-on-write child that is then copied at leisure (falling back to frozen,
    with the reason in ``CoreInfo.fallback``, when a fork is unsafe). ``halted``: a target the caller already
    halted (the daemon's ``stop: kernel``). Either way the target is resumed before this returns,
    on every path, and as early as the snapshot allows.
    """
    spec = content if isinstance(content, ContentSpec) else parse_spec(content)
    try:
        mode = SnapshotMode(snapshot)
    except ValueError as err:
        known = ", ".join(m.value for m in SnapshotMode)
        raise SnapshotError(f"unknown snapshot mode '{snapshot}'; use one of: {known}") from err
    path = os.path.abspath(path)
    t0 = time.monotonic()
    state = precheck(pid).state if halted is None else "R"
    out = CoreFile(path)
    try:
        try:
            pre = procfs.smaps(pid) if halted is None else None  # the slow part, before the freeze
            h = halted or halt(pid, timeout=timeout)
        except Zombie as err:
            # It passed precheck above, so it died since (while the temp file was made): that is
            # "exited during the dump", not a zombie we were asked to dump.
            raise TargetGone(pid, "the dump") from err
        try:
            res = _dump(h, out, _Request(spec, mode, state, current_tid, progress, pre))
        except (OSError, ValueError, IndexError, struct.error) as err:
            # SIGKILL cannot be held off by a ptrace-stop: a target can die at any point, and
            # /proc files of a dying process read as empty or vanish. Name that, not the symptom.
            if _target_alive(pid):
                raise
            raise TargetGone(pid, "the dump") from err
        finally:
            h.resume()
        st = out.publish(replace=replace, sync=sync)
    finally:
        out.close()
    return CoreInfo(
        pid=pid,
        path=path,
        comm=res.comm,
        exe=res.exe,
        threads=res.threads,
        mappings=len(res.segs),
        dumped_mappings=sum(1 for s in res.segs if s.filesz),
        apparent_size=st.st_size,
        disk_bytes=st.st_blocks * 512,
        memory_bytes=res.copied,
        content=str(spec),
        snapshot=res.mode.value,
        started=h.wall_time,
        freeze_seconds=h.freeze_seconds,
        elapsed_seconds=time.monotonic() - t0,
        fallback=res.fallback,
    )


def _target_alive(pid: int) -> bool:
    """Not exiting. A task SIGKILLed while we read it is not a zombie yet, but it has SIGKILL
    pending or has already dropped its memory (no Vm* lines in status: fs/proc/task_mmu.c)."""
    try:
        if procfs.stat(pid).state in ("Z", "X"):
            return False
        status = procfs.status(pid)
    except SnapdError:
        return False
    pending = int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)
    return "VmSize" in status and not pending & (1 << (9 - 1))  # SIGKILL


@dataclass(frozen=True)
class _Request:
    spec: ContentSpec
    mode: SnapshotMode
    state: str  # the target's state letter before the halt
    current_tid: int | None
    progress: Progress | None
    pre: list[Mapping] | None  # smaps read before the halt


def _dump(h: Halted, out: CoreFile, req: _Request) -> _Result:
    snap = capture(h, req.state, req.current_tid, req.pre)
    with MemReader(h.pid) as mem:
        segs = plan(snap, req.spec, mem)
    child: fork.SnapshotChild | None = None
    fallback = ""
    try:
        if req.mode is SnapshotMode.FORK:
            try:
                # A ^C or SIGTERM held during the clone is delivered as this block ends: by
                # then the child is ours to dispose of (the finally below), never leaked.
                with signals_held():
                    child = fork.fork_child(h, snap, req.spec)
            except fork.ForkUnsafe as why:
                fallback = str(why)
        if child is None:
            return _frozen(h, out, snap, segs, req, fallback)
        return _from_child(h, out, snap, segs, req, child)
    finally:
        if child is not None:
            # The target reaps the child in a halt of its own (fork.SnapshotChild.dispose), so
            # it must be running by then, also when a failure skipped the resume.
            h.resume()
            child.dispose()


def _frozen(
    h: Halted, out: CoreFile, snap: Snapshot, segs: list[Segment], req: _Request, fallback: str
) -> _Result:
    """Everything copied from the halted target; resumed after the last byte."""
    spec, progress = req.spec, req.progress
    fill_runs(h.pid, segs)
    out.write_headers(*layout(snap, segs, spec, SnapshotMode.FROZEN, []), len(segs))
    fast = copy_plan(s for s in segs if not _forced(s))
    forced = copy_plan(s for s in segs if _forced(s))
    want = sum(r[2] for r in fast) + sum(r[2] for r in forced)
    cb = (lambda done: progress(done, want)) if progress else None
    copied = out.copy(VmReader(h.pid), fast, cb)
    if forced:
        with MemReader(h.pid) as mem:
            copied += out.copy(mem, forced, None)
    h.resume()
    return _Result(segs, len(snap.threads), copied, snap.proc.comm, snap.exe, SnapshotMode.FROZEN, fallback)


def _from_child(
    h: Halted, out: CoreFile, snap: Snapshot, segs: list[Segment], req: _Request, child: fork.SnapshotChild
) -> _Result:
    """Halted: copy what the child lacks (DONTFORK, WIPEONFORK, shared memory if asked), resume.
    Then copy everything else from the child, whose memory is the target's at the fork."""
    spec, progress = req.spec, req.progress
    early = [s for s in segs if s.filesz and fork.needs_parent(s.mapping, spec)]
    late = [s for s in segs if s.filesz and s not in early]
    live = [i for i, s in enumerate(segs) if s in late and s.mapping.shared]
    out.write_headers(*layout(snap, segs, spec, SnapshotMode.FORK, live), len(segs))
    fill_runs(h.pid, early)
    copied = out.copy(VmReader(h.pid), copy_plan(early), None) if early else 0
    h.resume()
    fill_runs(child.pid, late)
    runs = copy_plan(late)
    want = sum(r[2] for r in runs)
    cb = (lambda done: progress(done, want)) if progress else None
    with MemReader(child.pid) as mem:
        copied += out.copy(mem, runs, cb)
    return _Result(segs, len(snap.threads), copied, snap.proc.comm, snap.exe, SnapshotMode.FORK, "")
