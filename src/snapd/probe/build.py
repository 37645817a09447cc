"""Compiling and loading the one BPF program set (probe.bpf.c), with or without its string
matcher; the only place bcc's BPF class is used. bcc reports compile, verifier and permission
errors as Exception."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snapd.probe import layout


def program(source: Path, on_event: Callable[..., Any], *, strings: bool) -> tuple[Any, Any, Any]:
    """The BPF object, the uprobe and the uretprobe program. Without ``strings`` the string
    comparisons of syscall rules are compiled out (SNAPD_NO_STRINGS), for kernels whose
    verifier refuses the matcher's loops."""
    from bcc import BPF  # the only bcc import in snapd

    flags = layout.cflags() + ([] if strings else ["-DSNAPD_NO_STRINGS"])
    b = BPF(src_file=str(source).encode(), cflags=flags)
    try:
        for fn, table, kind in layout.TAIL_CALLS:
            b[table][ct.c_int(0)] = ct.c_int(b.load_func(fn, getattr(BPF, kind)).fd)
        b.load_func(b"snapd_sys_enter", BPF.TRACEPOINT)
        b.load_func(b"snapd_sys_exit", BPF.TRACEPOINT)
        b.load_func(b"snapd_raw_enter", BPF.TRACEPOINT)
        b.load_func(b"snapd_tick", BPF.PERF_EVENT)
        b.load_func(b"snapd_cpu_sample", BPF.PERF_EVENT)
        up = b.load_func(b"snapd_uprobe", BPF.KPROBE)
        uret = b.load_func(b"snapd_uretprobe", BPF.KPROBE)
        b.load_func(b"snapd_signal_deliver", BPF.TRACEPOINT)
        b.load_func(b"snapd_signal_generate", BPF.TRACEPOINT)
        b[b"events"].open_ring_buffer(on_event)
        b.attach_tracepoint(tp=b"syscalls:sys_enter_clone", fn_name=b"snapd_clone_enter")
        b.attach_tracepoint(tp=b"syscalls:sys_exit_clone", fn_name=b"snapd_clone_exit")
    except BaseException:
        b.cleanup()
        raise
    return b, up, uret
