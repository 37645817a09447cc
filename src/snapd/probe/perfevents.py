"""The perf events the probes run on: cpu-clock timers for ``every`` and the ~99 Hz sampler on
every CPU for ``cpu`` (perf_event_open(2) through bcc)."""

from __future__ import annotations

import ctypes as ct
import os
from typing import Any

from snapd.probe import layout

PERF_TYPE_SOFTWARE = 1  # include/uapi/linux/perf_event.h
PERF_COUNT_SW_CPU_CLOCK = 0


def open_tick(bpf: Any, period_ns: int) -> int:
    """A cpu-clock event of ``period_ns`` on CPU 0 running snapd_tick; OSError if refused."""
    from bcc import BPF, lib

    fn = bpf.load_func(b"snapd_tick", BPF.PERF_EVENT)
    fd = int(
        lib.bpf_attach_perf_event(
            ct.c_int(fn.fd),
            ct.c_uint(PERF_TYPE_SOFTWARE),
            ct.c_uint(PERF_COUNT_SW_CPU_CLOCK),
            ct.c_ulonglong(period_ns),
            ct.c_ulonglong(0),
            ct.c_int(-1),
            ct.c_int(0),
            ct.c_int(-1),
        )
    )
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd))
    return fd


def close_tick(fd: int) -> None:
    from bcc import lib

    lib.bpf_close_perf_event_fd(ct.c_int(fd))


def attach_sampler(bpf: Any) -> None:
    bpf.attach_perf_event(
        ev_type=PERF_TYPE_SOFTWARE,
        ev_config=PERF_COUNT_SW_CPU_CLOCK,
        fn_name=b"snapd_cpu_sample",
        sample_period=layout.CPU_SAMPLE_PERIOD_NS,
    )


def detach_sampler(bpf: Any) -> None:
    bpf.detach_perf_event(ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK)
