"""diff_cores(): two cores of one process, compared mapping by mapping."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from snapd.diff import stacks
from snapd.diff.context import diff_context
from snapd.diff.corefile import CoreImage, Load, open_core, open_fd
from snapd.diff.errors import DifferentProcesses
from snapd.diff.match import Status, match, status
from snapd.diff.model import ClassDelta, CoreSide, Diff, MappingDelta, Stats, ThreadsDelta
from snapd.diff.pages import WINDOW, Comparer, Counted, Source, clip, data_runs, union

ELF_MAGIC = b"\x7fELF"
#: Mappings shown by default, most significant first.
DEFAULT_TOP = 20

Context = Mapping[str, Any]


def default_workers() -> int:
    """The CPUs this process may run on (sched_getaffinity honours cpusets), at most 4: beyond
    that memory bandwidth, not CPU, bounds the compare."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def check_same_process(a: CoreImage, b: CoreImage) -> list[str]:
    """Raise :class:`DifferentProcesses` unless ``a`` and ``b`` are of one process; return
    warnings about what could not be checked.

    A pid is reused once its process is reaped: snapd's cores also carry the process's start
    time (clock ticks after boot, /proc/PID/stat field 22), which with the pid names one process
    for the life of a boot. Cores without it (the kernel's, gdb's) are compared by pid and main
    executable (the NT_FILE mapping that holds AT_ENTRY)."""
    if a.pid != b.pid:
        raise DifferentProcesses(a.path, b.path, f"pid {a.pid} and pid {b.pid}")
    if a.start_time is not None and b.start_time is not None:
        if a.start_time != b.start_time:
            raise DifferentProcesses(
                a.path,
                b.path,
                f"pid {a.pid} was reused: one started {a.start_time}, the other {b.start_time} "
                "clock ticks after boot",
            )
        return []
    if a.exe and b.exe and a.exe != b.exe:
        raise DifferentProcesses(a.path, b.path, f"pid {a.pid} runs {a.exe} in one, {b.exe} in the other")
    if not (a.exe and b.exe):
        return [f"pid {a.pid}: a core names no executable; assumed to be one process"]
    return []


def _check_contexts(a: CoreImage, b: CoreImage, context: tuple[Context, Context]) -> None:
    for img, ctx, name in ((a, context[0], "context A"), (b, context[1], "context B")):
        pid = ctx.get("pid") if isinstance(ctx, Mapping) else None
        if isinstance(pid, int) and pid != img.pid:
            raise DifferentProcesses(
                img.path, name, f"pid {img.pid} and pid {pid}", "give the contexts captured with these cores"
            )


def _side(img: CoreImage, resident: int) -> CoreSide:
    return CoreSide(
        path=img.path,
        pid=img.pid,
        comm=img.comm,
        exe=img.exe,
        time=img.time,
        time_source=img.time_source,
        threads=len(img.tids),
        resident=resident,
        start_time=img.start_time,
        producer=img.producer,
        truncated=img.truncated,
    )


class _Engine:
    def __init__(
        self, img_a: CoreImage, fd_a: int, img_b: CoreImage, fd_b: int, window: int, workers: int
    ) -> None:
        self.a, self.fd_a, self.b, self.fd_b = img_a, fd_a, img_b, fd_b
        self.src_a = Source(img_a.path, fd_a, window)
        self.src_b = Source(img_b.path, fd_b, window)
        self.comparer = Comparer(self.src_a, self.src_b, window, workers)
        #: resident bytes per class, each core's under the class that core gave a mapping (it
        #: can be 'anon' in A and 'stack' in B, once a thread runs on it)
        self.classes: dict[str, ClassDelta] = {}
        self.files_a = set(img_a.files)
        self.files_b = set(img_b.files)

    def close(self) -> None:
        self.comparer.close()  # waits for the windows in flight before the fds are closed

    def runs(self, img: CoreImage, fd: int, ld: Load | None) -> Counted | None:
        if ld is None:
            return None
        return Counted(data_runs(img.path, fd, ld.offset, ld.offset + ld.avail))

    def pair(self, la: Load | None, lb: Load | None) -> MappingDelta:
        ra, rb = self.runs(self.a, self.fd_a, la), self.runs(self.b, self.fd_b, lb)
        top = lb or la
        assert top is not None
        cls_a, cls_b = la.cls if la else "", lb.cls if lb else ""
        snapd_a, snapd_b = self.a.producer == "snapd", self.b.producer == "snapd"
        if la is not None and lb is not None and snapd_a and not snapd_b:
            cls_b = cls_a  # snapd's classes come from /proc (it knows [heap]); others' are guesses
        elif la is not None and lb is not None and snapd_b and not snapd_a:
            cls_a = cls_b
        st = status(la, lb)
        if st is Status.REMOVED and top.file and (top.start, top.end, top.file) in self.files_b:
            st = Status.SAME  # still mapped (B's NT_FILE says so); B's dumper left it out
        elif st is Status.ADDED and top.file and (top.start, top.end, top.file) in self.files_a:
            st = Status.SAME
        out = MappingDelta(
            start=top.start,
            end=top.end,
            cls=cls_b or cls_a,
            file=top.file,
            status=st.value,
            perms=top.perms,
            start_a=la.start if la else None,
            end_a=la.end if la else None,
            resident_a=0,
            resident_b=0,
        )
        if la is not None and lb is not None and ra is not None and rb is not None:
            # Only what both cores hold is compared: the range both mappings cover, and of it
            # what both files contain (a mapping may be left out of one core, or cut short).
            lo = max(la.start, lb.start)
            hi = min(la.end, lb.end, la.start + la.avail, lb.start + lb.avail)
            if hi > lo:
                oa, ob, length = la.offset + (lo - la.start), lb.offset + (lo - lb.start), hi - lo
                runs = union(clip(ra, oa, length), clip(rb, ob, length), length)
                pd = self.comparer.compare(oa, ob, length, runs)
                out.changed_pages = pd.changed
                out.compared_bytes = pd.compared
                out.changed_ranges = [(lo + s, lo + e) for s, e in pd.ranges]
        out.resident_a = ra.drain() if ra is not None else 0
        out.resident_b = rb.drain() if rb is not None else 0
        if la is not None:
            self.classes.setdefault(cls_a, ClassDelta(cls_a, 0, 0)).a += out.resident_a
        if lb is not None:
            self.classes.setdefault(cls_b, ClassDelta(cls_b, 0, 0)).b += out.resident_b
        return out


def diff_cores(
    path_a: str,
    path_b: str,
    *,
    top: int = DEFAULT_TOP,
    context: tuple[Context, Context] | None = None,
    reports: tuple[Context | None, Context | None] | None = None,
    window: int = WINDOW,
    workers: int | None = None,
    fds: tuple[int, int] | None = None,
) -> Diff:
    """Compare two cores of one process: memory by content class, mappings (added, removed,
    grown, shrunk, same; pages changed), threads. ``top`` bounds the mappings listed (0: all).

    ``context``: the /proc contexts the catalog captured beside each core, for fds, limits and
    cgroup. ``reports``: their stack reports (issue 11's JSON), for the threads whose top frames
    changed. ``workers``: threads comparing windows (default: the CPUs we may run on, at most
    4). A compressed core or a bundle (snapd.ship) is unpacked to a private temporary file
    first. ``fds``: the two cores already open (a confined worker that may not open them by
    path): they are read through dups of these, plain ELF cores only, and the paths only name
    them. Raises :class:`~snapd.diff.errors.BadCore` for a file that is not a usable core and
    :class:`~snapd.diff.errors.DifferentProcesses` for cores of two processes."""
    t0, cpu0 = time.monotonic(), time.process_time()
    with contextlib.ExitStack() as opened:
        if fds is not None:
            img_a, fd_a = open_fd(fds[0], path_a)
            opened.callback(os.close, fd_a)
            img_b, fd_b = open_fd(fds[1], path_b)
            opened.callback(os.close, fd_b)
        else:
            plain_a = opened.enter_context(_plain(path_a))
            plain_b = opened.enter_context(_plain(path_b))
            img_a, fd_a = open_core(plain_a, path_a if plain_a != path_a else None)
            opened.callback(os.close, fd_a)
            img_b, fd_b = open_core(plain_b, path_b if plain_b != path_b else None)
            opened.callback(os.close, fd_b)
        return _diff(img_a, fd_a, img_b, fd_b, top, context, reports, window, workers, t0, cpu0)


@contextlib.contextmanager
def _plain(path: str) -> Iterator[str]:
    """``path`` itself for an ELF file (or one we cannot read: open_core says why), else the
    plain core that a compressed core (ours, or systemd-coredump's .zst) or a bundle holds,
    unpacked into a private temporary directory for as long as the diff runs."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head in (b"", ELF_MAGIC):
        yield path
        return
    from snapd.ship.opencore import open_core as unpack  # zstandard: only when it is needed

    with unpack(path) as plain:
        yield plain


def _diff(
    img_a: CoreImage,
    fd_a: int,
    img_b: CoreImage,
    fd_b: int,
    top: int,
    context: tuple[Context, Context] | None,
    reports: tuple[Context | None, Context | None] | None,
    window: int,
    workers: int | None,
    t0: float,
    cpu0: float,
) -> Diff:
    warnings = [*img_a.warnings, *img_b.warnings, *check_same_process(img_a, img_b)]
    if context is not None:
        _check_contexts(img_a, img_b, context)
    for fd in (fd_a, fd_b):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    engine = _Engine(img_a, fd_a, img_b, fd_b, window, default_workers() if workers is None else workers)
    try:
        deltas = [engine.pair(la, lb) for la, lb in match(img_a.loads, img_b.loads)]
    finally:
        engine.close()

    by_class = sorted(engine.classes.values(), key=lambda c: (-max(c.a, c.b), c.cls))
    if img_a.producer != img_b.producer:
        warnings.append(
            f"core A was written by {img_a.producer}, core B by {img_b.producer}: resident bytes "
            "compare what each wrote (gdb writes untouched pages as zeros, snapd and the kernel "
            "leave holes, and each leaves out different mappings); changed pages compare content"
        )
    if img_a.time and img_b.time and img_b.time < img_a.time:
        warnings.append("core B is older than core A: the diff shows A as it was after B")
    changed = sorted((d for d in deltas if d.changed), key=lambda d: (-d.weight, d.start))
    resident_a = sum(d.resident_a for d in deltas)
    resident_b = sum(d.resident_b for d in deltas)
    tids_a, tids_b = set(img_a.tids), set(img_b.tids)
    threads = ThreadsDelta(
        a=len(img_a.tids),
        b=len(img_b.tids),
        added=sorted(tids_b - tids_a),
        removed=sorted(tids_a - tids_b),
    )
    if reports is not None:
        moved = stacks.changed_threads(*reports)
        if moved is not None:
            threads.changed, threads.compared_stacks = moved, True
    ctx = diff_context(*context) if context is not None else None
    seconds = time.monotonic() - t0
    return Diff(
        a=_side(img_a, resident_a),
        b=_side(img_b, resident_b),
        by_class=by_class,
        mappings=changed[:top] if top > 0 else changed,
        mappings_total=len(deltas),
        mappings_changed=len(changed),
        changed_pages=sum(d.changed_pages for d in deltas),
        threads=threads,
        context=ctx,
        stats=Stats(
            compared_bytes=sum(d.compared_bytes for d in deltas),
            resident_bytes=resident_a + resident_b,
            seconds=seconds,
            cpu_seconds=time.process_time() - cpu0,
            window=window,
        ),
        warnings=warnings,
    )
