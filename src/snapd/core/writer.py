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
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from snapd import procfs
from snapd.atomicfile import AtomicFile
from snapd.content import DEFAULT_CONTENT, ContentSpec, SnapshotMode, parse_spec
from snapd.core import elf, fork, notes, select, strategy
from snapd.core.elf import PF, PT, Phdr
from snapd.core.info import CoreInfo
from snapd.core.memory import MemReader, Reader, VmReader, copy_runs, open_direct
from snapd.core.pages import PageMap
from snapd.core.pool import Pool, warm
from snapd.core.priority import Nice, boost
from snapd.core.select import Amount
from snapd.core.snapshot import Snapshot, capture
from snapd.core.staging import READERS, Copier, Stats
from snapd.core.strategy import Strategy
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
        self.copier: Copier | None = None
        self.mapped = Stats()  # what the mmap method did (it has no copier)
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

    def start(self, strat: Strategy, pool: Pool) -> None:
        """Start the writers of ``strat`` (before the halt: threads and staging are ready)."""
        if strat.staged:
            dfd = self.dfd if any(k.value == "direct" for k in strat.sinks) else None
            self.copier = Copier(self.fd, dfd, strat.sinks, pool, hold=strat.frozen)

    def copy(
        self,
        reader: Reader | list[Reader],
        runs: list[tuple[int, int, int]],
        progress: Callable[[int], None] | None,
        *,
        halted: bool = False,
    ) -> int:
        """Copy ``runs`` of (file offset, address, length): into staging for the writers, or
        (method mmap) straight into a mapping of the file. Returns bytes read; once it returns
        the source may change. Blocks are reserved before anything is written (the staged
        writers reserve each piece themselves, off the halt)."""
        try:
            if self.copier is not None:
                return self.copier.read(reader, runs, progress, boosted=halted)
            reader = reader[0] if isinstance(reader, list) else reader
            self.reserve(runs)
            t = time.monotonic()
            n, skipped, pwrite = copy_runs(reader, self.fd, runs, progress)
            self.mapped.read_bytes += n
            self.mapped.read_seconds += time.monotonic() - t
            self.mapped.skipped_pages += skipped
            # "pwrite": the file system refused a shared mapping of the output (copy_runs)
            self.mapped.written = {"pwrite" if pwrite else "mmap": self.mapped.read_bytes}
            self.mapped.write_seconds = self.mapped.read_seconds
            return n
        except OSError as err:
            raise OutputError(self.path, err) from err

    def drain(self, progress: Callable[[int], None] | None = None) -> Stats:
        """Wait until the writers have written everything read (after the resume)."""
        try:
            return self.copier.finish(progress) if self.copier else self.mapped
        except OSError as err:
            raise OutputError(self.path, err) from err

    def publish(self, *, replace: bool = True, sync: bool = True) -> os.stat_result:
        try:
            return super().publish(replace=replace, sync=sync)
        except OSError as err:
            raise OutputError(self.path, err) from err

    def close(self) -> None:
        if self.copier is not None:
            self.copier.close()  # writers stopped before their descriptors go
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
    cmdline: list[str]


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
    budget: str | int | None = None,
    method: str | None = None,
) -> CoreInfo:
    """Write an ELF core of live process ``pid`` to ``path`` and return what was written.

    ``content`` and ``snapshot`` may be given as text (``snapd gcore``'s ``-c`` and
    ``--snapshot``, parsed here) or parsed. ``snapshot``: "frozen" halts the target for the
    whole copy; "fork" halts it only to fork a copy-on-write child that is then copied at
    leisure (falling back to "frozen", with the reason in ``CoreInfo.fallback``, when a fork is
    unsafe); "auto" forks processes big enough for the fork's freeze to be the shorter one
    (:data:`strategy.AUTO_FORK_MIN`). ``halted``: a target the caller already halted (the
    daemon's ``stop: kernel``). Either way the target is resumed before this returns, on every
    path, and as early as the snapshot allows.

    The copy method and the frozen-mode staging (``budget``: bytes or "N%" of MemAvailable) are
    chosen from rates measured on the destination file system (:mod:`snapd.core.strategy`);
    ``method`` forces one. The measuring happens here, before the halt, if the cached
    measurements are missing or stale, and never while the target is halted.
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
    cap = strategy.budget(budget)
    out = CoreFile(path)
    pool: Pool | None = None
    try:
        try:
            pre = procfs.smaps(pid) if halted is None else None  # the slow part, before the freeze
            mode, strat = strategy.prepare(
                pid,
                pre,
                spec,
                os.path.dirname(path),
                mode,
                sync=sync,
                have_direct=out.dfd is not None,
                cap=cap,
                force=method,
                before_halt=halted is None,
            )
            # Faulted in while the target still runs, as is the staging's head:
            warm(strat.estimate if strat.frozen else strategy.WARM_ALL)
            # at most HEAD_SECONDS of it: it delays the halt, the moment the core shows
            pool = Pool(strat.staging, strat.head, deadline=time.monotonic() + strategy.HEAD_SECONDS)
            out.start(strat, pool)
        except (Zombie, TargetGone) as err:
            # Gone after precheck, while the plan was read and the temp file made: say "during
            # the dump", as for a death while halted, not the bare "no such process".
            raise TargetGone(pid, "the dump") from err
        nice = boost()  # until the target runs again
        try:
            h = halted or halt(pid, timeout=timeout)
        except (Zombie, TargetGone) as err:
            # It passed precheck above, so it died since (while the temp file was made, or as
            # PTRACE_SEIZE ran: ESRCH): that is "exited during the dump", not a zombie we were
            # asked to dump nor a pid that never was.
            nice.stop()
            raise TargetGone(pid, "the dump") from err
        except BaseException:
            nice.stop()
            raise
        try:
            res = _dump(h, out, _Request(spec, mode, state, current_tid, progress, pre, nice))
        except (OSError, ValueError, IndexError, struct.error) as err:
            # SIGKILL cannot be held off by a ptrace-stop: a target can die at any point, and
            # /proc files of a dying process read as empty or vanish. Name that, not the symptom.
            if _target_alive(pid):
                raise
            raise TargetGone(pid, "the dump") from err
        finally:
            h.resume()
            nice.stop()
        t_drain = time.monotonic()
        stats = out.drain((lambda done: progress(done, res.copied)) if progress else None)
        drain = time.monotonic() - t_drain
        st = out.publish(replace=replace, sync=sync)
    finally:
        out.close()
        if pool is not None:
            pool.close()
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
        cmdline=res.cmdline,
        copy=strategy.report(strat, stats, drain, frozen=res.mode is SnapshotMode.FROZEN),
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
    boost: Nice  # the CPU priority of the copy while halted, to end at the resume


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


def _result(snap: Snapshot, segs: list[Segment], copied: int, mode: SnapshotMode, fallback: str) -> _Result:
    p = snap.proc
    return _Result(segs, len(snap.threads), copied, p.comm, snap.exe, mode, fallback, procfs.argv(p.cmdline))


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
    # One reader: copying into staging is bound by memory bandwidth, which a second one would
    # share (measured: no shorter freeze, more waiting for chunks).
    copied = out.copy(VmReader(h.pid), fast, cb, halted=True)
    if forced:
        with MemReader(h.pid) as mem:
            copied += out.copy(mem, forced, None, halted=True)
    h.resume()
    return _result(snap, segs, copied, SnapshotMode.FROZEN, fallback)


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
    copied = out.copy(VmReader(h.pid), copy_plan(early), None, halted=True) if early else 0
    h.resume()
    req.boost.stop()
    fill_runs(child.pid, late)
    runs = copy_plan(late)
    want = sum(r[2] for r in runs)
    cb = (lambda done: progress(done, want)) if progress else None
    # /proc/CHILD/mem copies a page at a time (mm/memory.c access_remote_vm), bound by a CPU,
    # not by memory bandwidth: one reader per CPU (READERS).
    with contextlib.ExitStack() as stack:
        mems: list[Reader] = [stack.enter_context(MemReader(child.pid)) for _ in range(READERS)]
        copied += out.copy(mems, runs, cb)
    return _result(snap, segs, copied, SnapshotMode.FORK, "")
