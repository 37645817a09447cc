"""What this kernel offers snapd: each feature probed at run time, never read off the version.

A probe tries the feature the way snapd uses it (an ioctl on a page of our own, a BPF map or a
one-helper program handed to the verifier, a tracefs directory) and its answer is cached for the
life of the process. Each feature names what snapd does without it: a fallback that is used
silently (``snapd gcore -v`` and ``snapd ctl status`` say which), or none, in which case whatever
needs it is refused with one line naming the kernel feature (:func:`require`).

The kernel versions in :data:`FEATURES` are documentation for the reader; no decision reads them.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any

from snapd.errors import SnapdError
from snapd.sys import btf, pagemap


class Feature(Enum):
    PAGEMAP_SCAN = "pagemap_scan"
    BPF_RINGBUF = "bpf_ringbuf"
    BPF_SEND_SIGNAL = "bpf_send_signal"
    BPF_PROBE_READ_KERNEL = "bpf_probe_read_kernel"
    BPF_ANCESTOR_CGROUP = "bpf_get_current_ancestor_cgroup_id"
    SYSCALL_TRACEPOINTS = "syscall_tracepoints"
    SCHED_TRACEPOINTS = "sched_tracepoints"
    EXIT_GROUP_DEAD = "sched_process_exit_group_dead"
    UPROBE_MULTI = "uprobe_multi"
    KERNEL_HEADERS = "kernel_headers"


@dataclass(frozen=True)
class Spec:
    """What a feature is, what snapd uses it for, and what it does without it."""

    title: str
    since: str  # for the reader only
    used_for: str
    fallback: str | None  # None: no fallback; what needs it is refused


FEATURES: dict[Feature, Spec] = {
    Feature.PAGEMAP_SCAN: Spec(
        "the PAGEMAP_SCAN ioctl",
        "Linux 6.7",
        "finding the resident pages of a mapping in one call (sparse cores)",
        "/proc/PID/pagemap, 8 bytes read per page",
    ),
    Feature.BPF_RINGBUF: Spec(
        "the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)", "Linux 5.8", "handing probe events to snapd", None
    ),
    Feature.BPF_SEND_SIGNAL: Spec(
        "the bpf_send_signal helper", "Linux 5.3", "stop: kernel (SIGSTOP sent by the probe)", None
    ),
    Feature.BPF_PROBE_READ_KERNEL: Spec(
        "the bpf_probe_read_kernel helper", "Linux 5.5", "reading syscall arguments in the probe", None
    ),
    Feature.BPF_ANCESTOR_CGROUP: Spec(
        "the bpf_get_current_ancestor_cgroup_id helper",
        "Linux 5.7",
        "unit: and cgroup: targets, matched in the probe",
        None,
    ),
    Feature.SYSCALL_TRACEPOINTS: Spec(
        "syscall tracepoints (CONFIG_FTRACE_SYSCALLS)", "Linux 2.6.33", "syscall triggers", None
    ),
    Feature.SCHED_TRACEPOINTS: Spec(
        "the sched_process_exec/fork/exit tracepoints", "Linux 3.4", "following targets that start", None
    ),
    Feature.EXIT_GROUP_DEAD: Spec(
        "the group_dead field of the sched_process_exit tracepoint",
        "newer than 6.1; 6.18 has it",
        "telling a process's exit from a thread's in the probe",
        "current->signal->live read in the probe (no thread left: the group is dead)",
    ),
    Feature.UPROBE_MULTI: Spec(
        "uprobe_multi BPF links that filter by process (BPF_TRACE_UPROBE_MULTI)",
        "Linux 6.6; by process, not thread, since 6.10",
        "function and usdt triggers: a hit in a target runs the program without the perf event's filter lock",
        "one perf-event uprobe per site (perf_event_open on the uprobe PMU)",
    ),
    Feature.KERNEL_HEADERS: Spec(
        "kernel headers for bcc (/lib/modules/RELEASE/build or CONFIG_IKHEADERS)",
        "-",
        "compiling the probe program",
        None,
    ),
}

#: what the daemon's probe program needs, all of it (the program is one, whatever a rule says)
PROBE_FEATURES = (
    Feature.KERNEL_HEADERS,
    Feature.BPF_RINGBUF,
    Feature.BPF_PROBE_READ_KERNEL,
    Feature.BPF_SEND_SIGNAL,
    Feature.BPF_ANCESTOR_CGROUP,
    Feature.SCHED_TRACEPOINTS,
    Feature.SYSCALL_TRACEPOINTS,
)
#: what ``snapd gcore`` uses
GCORE_FEATURES = (Feature.PAGEMAP_SCAN,)


@dataclass(frozen=True)
class Probed:
    """One probe's answer. ``present`` is None when the probe could not tell (no privilege)."""

    feature: Feature
    present: bool | None
    detail: str
    caveat: bool = False  # present, but with a limit the detail names

    @property
    def spec(self) -> Spec:
        return FEATURES[self.feature]

    def uses(self) -> str:
        """What snapd uses: the feature itself, its fallback, or nothing (refused)."""
        if self.present is not False:
            return self.spec.title
        return self.spec.fallback or "nothing: refused"

    def line(self) -> str:
        """``pagemap_scan: no (ENOTTY); using /proc/PID/pagemap, 8 bytes read per page``"""
        word = {True: "yes, but" if self.caveat else "yes", False: "no", None: "unknown"}[self.present]
        text = f"{self.feature.value}: {word} ({self.detail})"
        if self.present is False:
            fb = self.spec.fallback
            text += f"; using {fb}" if fb else f"; {self.spec.used_for}: refused"
        return text


class KernelFeatureMissing(SnapdError):
    """Something snapd needs, with no fallback, is not offered by the running kernel."""

    def __init__(self, probed: Probed, who: str) -> None:
        spec = probed.spec
        super().__init__(
            f"{who} needs {spec.title} ({spec.since}+, for {spec.used_for}), which this kernel "
            f"({os.uname().release}) lacks: {probed.detail}"
        )
        self.feature = probed.feature
        self.detail = probed.detail


# ---- the probes ---------------------------------------------------------------------------------


def _pagemap_scan() -> tuple[bool | None, str]:
    # The ioctl the core writer makes (snapd.core.pages, through snapd.sys.pagemap), on one
    # resident page of our own.
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, page)
    fd = -1
    try:
        buf[0] = 1  # fault it in: the scan must find it
        view = ctypes.c_char.from_buffer(buf)
        addr = ctypes.addressof(view)
        del view  # the mapping cannot be closed while a ctypes object exports it
        vec = (pagemap.Region * 4)()
        arg = pagemap.ScanArg()
        arg.size = ctypes.sizeof(pagemap.ScanArg)
        arg.start, arg.end = addr, addr + page
        arg.vec, arg.vec_len = ctypes.addressof(vec), len(vec)
        arg.category_anyof_mask = arg.return_mask = pagemap.Cat.PRESENT | pagemap.Cat.SWAPPED
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            n = pagemap.scan(fd, arg)
        except OSError as err:
            if err.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                return False, "the ioctl is refused (ENOTTY or EINVAL)"
            raise
    except OSError as err:
        return None, f"/proc/self/pagemap: {_errname(err)}"
    finally:
        if fd >= 0:
            os.close(fd)
        buf.close()
    if n != 1 or (vec[0].start, vec[0].end) != (addr, addr + page):
        return False, "the ioctl does not see a resident page"
    return True, "the ioctl found a resident page"


# bpf(2): include/uapi/linux/bpf.h
_NR_BPF = 321  # x86_64
_BPF_MAP_CREATE, _BPF_PROG_LOAD = 0, 5


class MapType(IntEnum):
    RINGBUF = 27


class ProgType(IntEnum):
    KPROBE = 2
    TRACEPOINT = 5
    PERF_EVENT = 7


class Helper(IntEnum):
    """enum bpf_func_id (the order of __BPF_FUNC_MAPPER)."""

    SEND_SIGNAL = 109
    PROBE_READ_KERNEL = 113
    GET_CURRENT_ANCESTOR_CGROUP_ID = 123


class _MapCreate(ctypes.Structure):
    """The BPF_MAP_CREATE part of union bpf_attr (the rest must be zero)."""

    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("zero", ctypes.c_char * 112),
    ]


class _ProgLoad(ctypes.Structure):
    """The BPF_PROG_LOAD part of union bpf_attr (the rest must be zero)."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("zero", ctypes.c_char * 56),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: _MapCreate | _ProgLoad) -> int:
    fd = int(
        _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.sizeof(attr))
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _errname(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, str(err.errno))


def _no_privilege(err: OSError) -> bool:
    return err.errno in (errno.EPERM, errno.EACCES)


def _map_type(kind: MapType, key: int, value: int, entries: int) -> tuple[bool | None, str]:
    attr = _MapCreate(map_type=kind, key_size=key, value_size=value, max_entries=entries)
    try:
        os.close(_bpf(_BPF_MAP_CREATE, attr))
    except OSError as err:
        if _no_privilege(err):
            return None, f"BPF_MAP_CREATE: {_errname(err)} (needs CAP_BPF)"
        return False, f"BPF_MAP_CREATE: {_errname(err)}"
    return True, "a map was created"


def _insn(code: int, dst: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm} with src = off = 0."""
    return bytes([code, dst, 0, 0]) + (imm & 0xFFFFFFFF).to_bytes(4, "little")


def _prog_load(
    code: bytes, prog: ProgType, *, log: ctypes.Array[ctypes.c_char] | None = None, attach_type: int = 0
) -> int:
    """BPF_PROG_LOAD of ``code`` (GPL; the verifier's log into ``log``): the program's fd."""
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoad(
        prog_type=prog,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        expected_attach_type=attach_type,
    )
    if log is not None:
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    return _bpf(_BPF_PROG_LOAD, attr)


def _helper(helper: Helper, prog: ProgType) -> tuple[bool | None, str]:
    """Hand the verifier ``r1..r5 = 0; call helper; r0 = 0; exit``. Only an unknown or disallowed
    helper is reported as "invalid func" (kernel/bpf/verifier.c check_helper_call; "unknown func"
    on older kernels): any other complaint (an argument of the wrong type) means it exists."""
    mov_k, call, exit_ = 0xB7, 0x85, 0x95  # BPF_ALU64|BPF_MOV|BPF_K, BPF_JMP|BPF_CALL, BPF_JMP|BPF_EXIT
    code = b"".join(_insn(mov_k, dst=r) for r in range(1, 6))
    code += _insn(call, imm=helper) + _insn(mov_k, dst=0) + _insn(exit_)
    log = ctypes.create_string_buffer(1 << 16)
    name = f"helper #{helper.value} in a {prog.name.lower()} program"
    try:
        os.close(_prog_load(code, prog, log=log))
    except OSError as err:
        text = log.value.decode(errors="replace").strip()
        said = [ln for ln in text.splitlines() if "invalid func " in ln or "unknown func " in ln]
        if said:
            return False, f"the verifier: {said[0]}"
        if _no_privilege(err) and not text:
            return None, f"BPF_PROG_LOAD: {_errname(err)} (needs CAP_BPF)"
        return True, f"{name}: known to the verifier"
    return True, f"{name}: verified"


def _uprobe_multi() -> tuple[bool | None, str]:
    """Load ``r0 = 0; exit`` as a uprobe_multi program and ask for two links the kernel must
    refuse, each in a way that tells what it knows (kernel/trace/bpf_trace.c
    bpf_uprobe_multi_link_attach): "/" is no regular file, EBADF from a kernel that has such
    links (an older one has no such attach type: EINVAL); pid -1 is EINVAL, checked before the
    path, only once the link filters by process (before 6.10 it ran for the one thread the pid
    named, which would miss a target's other threads)."""
    from snapd.sys import bpflink  # only the probes ask: snapd gcore starts without it

    mov_k, exit_ = 0xB7, 0x95
    code = _insn(mov_k, dst=0) + _insn(exit_)
    try:
        fd = _prog_load(code, ProgType.KPROBE, attach_type=bpflink.BPF_TRACE_UPROBE_MULTI)
    except OSError as err:
        if _no_privilege(err):
            return None, f"BPF_PROG_LOAD: {_errname(err)} (needs CAP_BPF)"
        return False, f"BPF_PROG_LOAD of a uprobe_multi program: {_errname(err)}"
    try:
        answers = []
        for pid in (0, -1):
            try:
                os.close(bpflink.uprobe_multi(fd, b"/", [bpflink.Site(0)], pid=pid))
                answers.append("accepted")
            except OSError as err:
                answers.append(_errname(err))
    finally:
        os.close(fd)
    if answers[0] != "EBADF":
        return False, f"BPF_LINK_CREATE uprobe_multi: {answers[0]}"
    if answers[1] != "EINVAL":
        return False, "uprobe_multi links filter by thread, not process (fixed in Linux 6.10)"
    return True, "uprobe_multi links, filtered by process"


_TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def _tracepoints(*events: str) -> tuple[bool | None, str]:
    for root in _TRACEFS:
        if os.path.isdir(f"{root}/events"):
            missing = [e for e in events if not os.path.isdir(f"{root}/events/{e}")]
            if missing:
                return False, f"no {root}/events/{missing[0]}"
            return True, f"{root}/events/{events[0]}"
        if os.path.isdir(root) and not os.access(root, os.R_OK | os.X_OK):
            return None, f"{root} is not readable (needs root)"
    return None, "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"


def _tracepoint_field(event: str, decl: str) -> tuple[bool | None, str]:
    """Does ``event``'s format declare ``decl`` (e.g. ``bool group_dead``)?"""
    for root in _TRACEFS:
        path = f"{root}/events/{event}/format"
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            continue
        except OSError as err:
            return None, f"{path}: {_errname(err)}"
        if f"field:{decl};" in text:
            return True, f"{path} has {decl}"
        return False, f"{path} has no {decl.split()[-1]}"
    return None, f"no readable tracefs with events/{event}"


def _kernel_headers() -> tuple[bool | None, str] | tuple[bool, str, bool]:
    release = os.uname().release
    build = f"/lib/modules/{release}/build"
    if os.path.exists(f"{build}/include/linux/kconfig.h") or os.path.exists(f"{build}/include/generated"):
        uts = Path(build, "include/generated/utsrelease.h")
        theirs = uts.read_text().split('"')[1] if uts.exists() else "?"
        if theirs != release:
            # Tracepoints, perf events and helpers keep their ABI; struct layouts do not. The
            # probe's struct reads take their offsets from the running kernel's BTF
            # (snapd.probe.layout.task_offsets); without it they would be the headers'.
            try:
                btf.member_offset("task_struct", "ptrace")
            except btf.BtfError:
                why = f"{build} holds another kernel's ({theirs}), and there is no BTF: struct reads "
                why += "in the probe may be wrong"
            else:
                why = f"{build} holds another kernel's ({theirs}); struct offsets come from {btf.VMLINUX}"
            return True, why, True
        return True, f"{build} (the kernel's own)"
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return True, "/sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS)"
    return False, f"no {build} (install linux-headers-{release}) and no /sys/kernel/kheaders.tar.xz"


_PROBES = {
    Feature.PAGEMAP_SCAN: _pagemap_scan,
    Feature.BPF_RINGBUF: lambda: _map_type(MapType.RINGBUF, 0, 0, mmap.PAGESIZE),
    Feature.BPF_SEND_SIGNAL: lambda: _helper(Helper.SEND_SIGNAL, ProgType.TRACEPOINT),
    Feature.BPF_PROBE_READ_KERNEL: lambda: _helper(Helper.PROBE_READ_KERNEL, ProgType.TRACEPOINT),
    Feature.BPF_ANCESTOR_CGROUP: lambda: _helper(Helper.GET_CURRENT_ANCESTOR_CGROUP_ID, ProgType.TRACEPOINT),
    Feature.SYSCALL_TRACEPOINTS: lambda: _tracepoints(
        "syscalls/sys_enter_getppid", "syscalls/sys_exit_getppid"
    ),
    Feature.SCHED_TRACEPOINTS: lambda: _tracepoints(
        "sched/sched_process_exec", "sched/sched_process_fork", "sched/sched_process_exit"
    ),
    Feature.EXIT_GROUP_DEAD: lambda: _tracepoint_field("sched/sched_process_exit", "bool group_dead"),
    Feature.UPROBE_MULTI: _uprobe_multi,
    Feature.KERNEL_HEADERS: _kernel_headers,
}


# ---- the API ------------------------------------------------------------------------------------


@functools.cache
def probe(feature: Feature) -> Probed:
    """The cached answer for ``feature`` (probed on first use)."""
    present, detail, *caveat = _PROBES[feature]()
    return Probed(feature, present, detail, bool(caveat and caveat[0]))


def has(feature: Feature) -> bool:
    """Usable, as far as we can tell (an unanswerable probe counts as yes: the real use will say)."""
    return probe(feature).present is not False


def require(features: Iterable[Feature], who: str) -> None:
    """Raise :class:`KernelFeatureMissing` for the first of ``features`` this kernel lacks."""
    for f in features:
        p = probe(f)
        if p.present is False and FEATURES[f].fallback is None:
            raise KernelFeatureMissing(p, who)


def report(features: Iterable[Feature] = tuple(Feature)) -> list[Probed]:
    return [probe(f) for f in features]


def describe(features: Iterable[Feature] = tuple(Feature)) -> str:
    """One log line: the features this kernel lacks (or cannot be asked about) and what is used."""
    odd = [p.line() for p in report(features) if p.present is not True or p.caveat]
    return "; ".join(odd) if odd else "every kernel feature snapd uses is present"


def summary(features: Iterable[Feature] = tuple(Feature)) -> dict[str, Any]:
    """For ``snapd ctl status``: the release and, per feature, yes / no + what is used instead."""
    out: dict[str, Any] = {"release": os.uname().release}
    for p in report(features):
        word = {True: "yes", False: "no", None: "unknown"}[p.present]
        if p.present is not True:
            out[p.feature.value] = f"{word}: using {p.uses()} ({p.detail})"
        else:
            out[p.feature.value] = f"yes, but {p.detail}" if p.caveat else "yes"
    return out
