"""Uprobes attached by file offset, per target process or system-wide, each with a BPF cookie.

bcc's ``attach_uprobe`` names a probe by path and symbol and cannot pass a cookie. snapd needs
both less and more: the offset comes from :mod:`snapd.probe.symbols` or :mod:`snapd.probe.usdt`,
and the one shared uprobe program must learn which attachment fired without per-rule C. So a
uprobe is opened here with perf_event_open(2) on the ``uprobe`` PMU
(/sys/bus/event_source/devices/uprobe: ``config1`` the path, ``config2`` the offset, the
``retprobe`` bit and ``ref_ctr_offset`` field as its ``format/`` files say) and linked to the
program with BPF_LINK_CREATE (attach type BPF_PERF_EVENT) carrying a 64-bit cookie, which the
program reads with bpf_get_attach_cookie() (both since Linux 5.15; include/uapi/linux/bpf.h).

Scope, as decided in docs/triggers-design.md:

- ``pid`` given: the perf event is bound to that process (all its threads share the mm, which is
  what kernel/trace/trace_uprobe.c uprobe_perf_filter compares), so the breakpoint is written
  into that process only: every other process pays nothing, not even the trap.
- ``pid`` None: one system-wide event (pid -1 on CPU 0; the BPF program runs on every CPU, as
  it hangs off the trace event, not the perf buffer): every process that maps the file traps,
  and the program's first instructions turn the non-targets away.

``ref_ctr_offset`` (a USDT semaphore's file offset) makes the kernel increment the u16 at that
offset in exactly the processes the uprobe is installed in, and decrement it when the uprobe is
removed, however snapd ends (kernel/events/uprobes.c update_ref_ctr).

Where the kernel has them (:data:`snapd.kernel.Feature.UPROBE_MULTI`), :func:`attach_multi`
makes one uprobe_multi link instead (:mod:`snapd.sys.bpflink`): the same breakpoints, scope,
cookies and semaphores, all of a rule's sites in one process in one link, and no per-hit filter
lock: a perf-event uprobe bound to a process takes ``filter->rwlock`` in uprobe_perf_filter at
every hit (a system-wide one skips it, which is why bpftrace's ``/pid == N/`` form paid less).
The program must then be loaded for such links (snapd.probe.build); both forms give it the
same ``pt_regs`` and ``bpf_get_attach_cookie()``.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno as _errno
import functools
import os
import platform
import struct
from dataclasses import dataclass, field

from snapd.errors import SnapdError
from snapd.probe import usdt
from snapd.probe.usdt import ArgSpec
from snapd.sys import bpflink

PMU_DIR = "/sys/bus/event_source/devices/uprobe"
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
SYS_BPF = {"x86_64": 321, "aarch64": 280}
PERF_FLAG_FD_CLOEXEC = 8
PERF_ATTR_SIZE_VER5 = 112
BPF_LINK_CREATE = 28
BPF_PERF_EVENT = 41  # enum bpf_attach_type
_libc = ct.CDLL(None, use_errno=True)


class UprobeError(SnapdError):
    """A uprobe could not be opened or linked; ``errno`` says why."""

    def __init__(self, what: str, err: int, pid: int | None = None) -> None:
        hint = {
            _errno.ENOENT: "no such file",
            _errno.EINVAL: "the kernel refused the offset, reference counter or program",
            _errno.EPERM: "permission denied (needs root)",
            _errno.EACCES: "permission denied (needs root)",
            _errno.ESRCH: "no such process",
            _errno.EMFILE: "too many open files (raise LimitNOFILE)",
            _errno.EBUSY: "another tracer holds this probe with a different reference counter",
        }.get(err, os.strerror(err))
        where = f"pid {pid}: " if pid is not None else ""
        super().__init__(f"{where}cannot attach a uprobe at {what}: {hint}")
        self.errno = err
        self.pid = pid


class _PerfAttr(ct.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER5 (include/uapi/linux/perf_event.h)."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("size", ct.c_uint32),
        ("config", ct.c_uint64),
        ("sample_period", ct.c_uint64),
        ("sample_type", ct.c_uint64),
        ("read_format", ct.c_uint64),
        ("flags", ct.c_uint64),
        ("wakeup_events", ct.c_uint32),
        ("bp_type", ct.c_uint32),
        ("config1", ct.c_uint64),  # uprobe_path
        ("config2", ct.c_uint64),  # probe_offset
        ("branch_sample_type", ct.c_uint64),
        ("sample_regs_user", ct.c_uint64),
        ("sample_stack_user", ct.c_uint32),
        ("clockid", ct.c_int32),
        ("sample_regs_intr", ct.c_uint64),
        ("aux_watermark", ct.c_uint32),
        ("sample_max_stack", ct.c_uint16),
        ("reserved", ct.c_uint16),
    ]


@dataclass(frozen=True)
class Pmu:
    """The uprobe PMU of this kernel: its type and where its fields live in ``config``."""

    type: int
    retprobe_bit: int
    ref_ctr_shift: int | None  # None: the kernel has no USDT reference counters (< 4.20)


def _format_field(name: str) -> tuple[int, int] | None:
    """(first bit, last bit) of ``config`` for ``format/NAME`` ("config:32-63")."""
    try:
        with open(os.path.join(PMU_DIR, "format", name)) as f:
            spec = f.read().strip()
    except OSError:
        return None
    what, _, bits = spec.partition(":")
    if what != "config":
        return None
    lo, _, hi = bits.partition("-")
    return int(lo), int(hi or lo)


@functools.lru_cache(maxsize=1)
def pmu() -> Pmu:
    try:
        with open(os.path.join(PMU_DIR, "type")) as f:
            ptype = int(f.read())
    except (OSError, ValueError) as err:
        raise SnapdError(
            "this kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe): function and "
            "usdt triggers need CONFIG_UPROBE_EVENTS"
        ) from err
    ret = _format_field("retprobe")
    ref = _format_field("ref_ctr_offset")
    return Pmu(ptype, ret[0] if ret else 0, ref[0] if ref else None)


def _nr(table: dict[str, int]) -> int:
    m = platform.machine()
    if m not in table:
        raise SnapdError(f"uprobes are not supported on {m} yet")
    return table[m]


@dataclass
class Link:
    """One attachment: a perf event and its BPF link (closing either detaches it), or a
    uprobe_multi link (``perf_fd`` -1) holding every site it was made with."""

    what: str
    pid: int | None
    perf_fd: int
    link_fd: int
    closed: bool = field(default=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.link_fd, self.perf_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_event(
    path: str, offset: int, pid: int | None = None, retprobe: bool = False, ref_ctr_offset: int = 0
) -> int:
    """perf_event_open(2) of a uprobe; returns its fd."""
    p = pmu()
    what = f"{path}+{offset:#x}"
    if ref_ctr_offset and p.ref_ctr_shift is None:
        raise UprobeError(what + " (semaphore)", _errno.EOPNOTSUPP, pid)
    attr = _PerfAttr()
    attr.type = p.type
    attr.size = PERF_ATTR_SIZE_VER5
    cpath = ct.create_string_buffer(os.fsencode(path))
    attr.config1 = ct.addressof(cpath)
    attr.config2 = offset
    attr.config = (1 << p.retprobe_bit if retprobe else 0) | (
        (ref_ctr_offset << p.ref_ctr_shift) if ref_ctr_offset and p.ref_ctr_shift is not None else 0
    )
    attr.sample_period = 1
    attr.wakeup_events = 1
    # pid -1 needs a cpu; the program runs on every cpu all the same (see the module docstring)
    target, cpu = (pid, -1) if pid is not None else (-1, 0)
    fd = _libc.syscall(
        _nr(SYS_PERF_EVENT_OPEN), ct.byref(attr), target, cpu, -1, ct.c_ulong(PERF_FLAG_FD_CLOEXEC)
    )
    if fd < 0:
        raise UprobeError(what, ct.get_errno(), pid)
    return int(fd)


def link(prog_fd: int, perf_fd: int, cookie: int) -> int:
    """BPF_LINK_CREATE of ``prog_fd`` on perf event ``perf_fd`` with ``cookie``; returns its fd."""
    # union bpf_attr.link_create: prog_fd, target_fd, attach_type, flags, perf_event.bpf_cookie
    attr = ct.create_string_buffer(struct.pack("<IIIIQ", prog_fd, perf_fd, BPF_PERF_EVENT, 0, cookie), 64)
    fd = _libc.syscall(_nr(SYS_BPF), BPF_LINK_CREATE, attr, ct.c_uint(64))
    if fd < 0:
        return -ct.get_errno()
    return int(fd)


def attach(
    prog_fd: int,
    path: str,
    offset: int,
    *,
    pid: int | None = None,
    retprobe: bool = False,
    ref_ctr_offset: int = 0,
    cookie: int = 0,
) -> Link:
    """Attach program ``prog_fd`` (a BPF_PROG_TYPE_KPROBE) at ``offset`` of ``path``."""
    what = f"{path}+{offset:#x}"
    pfd = open_event(path, offset, pid, retprobe, ref_ctr_offset)
    lfd = link(prog_fd, pfd, cookie)
    if lfd < 0:
        os.close(pfd)
        err = -lfd
        if err == _errno.EINVAL:
            raise SnapdError(
                f"cannot link the uprobe program at {what}: this kernel has no BPF cookies for "
                "perf events (Linux 5.15 and later have them)"
            )
        raise UprobeError(what, err, pid)
    return Link(what, pid, pfd, lfd)


def attach_multi(
    prog_fd: int,
    path: str,
    sites: list[bpflink.Site],
    *,
    pid: int | None = None,
    retprobe: bool = False,
) -> Link:
    """Attach program ``prog_fd`` (loaded for uprobe_multi links) at every site of ``path`` in
    one link: in process ``pid`` only, or in every process that maps the file."""
    what = f"{path}+{sites[0].offset:#x}" + (f" and {len(sites) - 1} more" if len(sites) > 1 else "")
    try:
        lfd = bpflink.uprobe_multi(prog_fd, os.fsencode(path), sites, pid=pid or 0, retprobe=retprobe)
    except OSError as err:
        raise UprobeError(what, err.errno or _errno.EINVAL, pid) from err
    return Link(what, pid, -1, lfd)


def cookie(site: int, pid: int) -> int:
    """The BPF cookie of a link: the usite index, and the process it is for in the high half
    (0: system-wide), which the program compares with the current process instead of looking
    it up in the targets map (uprobe_hit in probe.bpf.c)."""
    return (pid << 32) | site


_USITE_HEAD = struct.Struct("<IIII")  # gen, slot, flags, nargs: struct usite in uprobe.bpf.c


def usite_bytes(gen: int, slot: int, flags: int, args: tuple[ArgSpec, ...] = ()) -> bytes:
    """The bytes of ``struct usite``: the attachment table entry a cookie points at."""
    return _USITE_HEAD.pack(gen, slot, flags, len(args)) + usdt.pack(args)
