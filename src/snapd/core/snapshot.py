"""The process as it was while halted: registers, signal state and /proc, not the memory.

:func:`capture` reads it from a :class:`~snapd.freeze.Halted` target; the writer plans segments
from it and a fork snapshot injects its clone with the registers captured here.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from snapd import procfs
from snapd.core import elf, notes, select
from snapd.core.pages import PageMap
from snapd.errors import TargetGone
from snapd.freeze import Halted
from snapd.procfs import Mapping


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
    start_time: int = 0  # /proc/PID/stat starttime (ticks after boot): with pid, the process's identity


def capture(
    h: Halted, state: str, current_tid: int | None = None, pre: list[Mapping] | None = None
) -> Snapshot:
    """Read registers, signal state and /proc of a halted process.

    ``pre``: /proc/PID/smaps read just before the halt (see :func:`halted_mappings`)."""
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
        mappings=halted_mappings(pid, pre),
        coredump_filter=procfs.coredump_filter(pid),
        exe=procfs.exe(pid),
        wall_time=h.wall_time,
        start_time=st.starttime,
    )


def _layout_key(m: Mapping) -> tuple[object, ...]:
    return (m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path)


def halted_mappings(pid: int, pre: list[Mapping] | None) -> list[Mapping]:
    """The mappings of a halted process, without walking its page tables if we can help it.

    /proc/PID/smaps walks every page table entry to count Rss and Anonymous (fs/proc/task_mmu.c
    smap_gather_stats): 11 ms per GiB here, a third of a fork snapshot's freeze. So smaps is read
    just before the halt, and while halted only /proc/PID/maps (no walk) to check that no mapping
    appeared, vanished or moved meanwhile; if one did, smaps is read again now. Of smaps we need
    the VmFlags (which change only through madvise/mmap calls, a window of milliseconds we
    accept) and whether a private file mapping holds anonymous (written) pages: for those that
    had none, PAGEMAP_SCAN asks, cheaply, whether one has been written since (the kernel's
    filter dumps a private mapping only once it has anonymous pages: core.select).
    """
    if pre is None:
        return procfs.smaps(pid)
    if [_layout_key(m) for m in procfs.maps(pid)] != [_layout_key(m) for m in pre]:
        return procfs.smaps(pid)
    try:
        with PageMap(pid) as pm:
            for m in pre:
                if (
                    not m.shared
                    and not m.anonymous
                    and not m.swap
                    and m.path not in select.ALWAYS_DUMP
                    and not select.never_read(m)
                    and pm.has_anon(m.start, m.end)
                ):
                    m.anonymous = elf.PAGE
    except OSError:
        return procfs.smaps(pid)
    return pre
