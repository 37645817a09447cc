"""perf_event_open(2) for one software cpu-clock event: can this process open what the probes
need (``snapd check``), without BPF."""

from __future__ import annotations

import ctypes
import os

from snapd.sys.libc import LIBC, last_error

NR_PERF_EVENT_OPEN = 298  # x86_64; arch/x86/entry/syscalls/syscall_64.tbl
PERF_TYPE_SOFTWARE = 1  # include/uapi/linux/perf_event.h
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_FLAG_FD_CLOEXEC = 1 << 3
ATTR_DISABLED = 1 << 0  # the first bit of the attr's flag word


class PerfEventAttr(ctypes.Structure):
    """The head of struct perf_event_attr; ``size`` tells the kernel how much we pass
    (PERF_ATTR_SIZE_VER0 is 64 bytes)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
    ]


def try_cpu_clock(period_ns: int, cpu: int = 0) -> None:
    """Open (disabled) and close a cpu-clock sampling event on ``cpu`` for all processes, as the
    probes do; OSError when the kernel refuses (perf_event_paranoid, no CAP_PERFMON, seccomp)."""
    attr = PerfEventAttr(
        type=PERF_TYPE_SOFTWARE,
        size=ctypes.sizeof(PerfEventAttr),
        config=PERF_COUNT_SW_CPU_CLOCK,
        sample_period=period_ns,
        flags=ATTR_DISABLED,
    )
    syscall = LIBC.syscall
    syscall.restype = ctypes.c_long
    fd = syscall(
        ctypes.c_long(NR_PERF_EVENT_OPEN),
        ctypes.byref(attr),
        ctypes.c_int(-1),
        ctypes.c_int(cpu),
        ctypes.c_int(-1),
        ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        raise last_error("perf_event_open")
    os.close(fd)
