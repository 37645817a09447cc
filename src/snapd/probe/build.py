"""Compiling and loading the one BPF program set (probe.bpf.c), once, with or without its
string matcher; the only place bcc's BPF class is used. bcc reports compile, verifier and permission
errors as Exception."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapd import kernel
from snapd.probe import layout
from snapd.sys import bpflink


@dataclass(frozen=True)
class Built:
    """The loaded program set: the BPF object, the uprobe and uretprobe programs (loaded for
    uprobe_multi links when ``multi``, else for perf-event uprobes: a program is one or the
    other, kernel/bpf/syscall.c bpf_prog_attach_check_attach_type), and why the string matcher
    is missing, if the kernel refused it ("" when it is in)."""

    bpf: Any
    uprobe: Any
    uretprobe: Any
    strings_error: str
    multi: bool = False
    ustrings_error: str = ""  # the same for the uprobe programs (function/usdt rules)


def _load_eval(b: Any, kind: int) -> tuple[Any, str]:
    """snapd_eval with the string matcher, or snapd_eval_plain where the verifier refuses it:
    6.1's gives up on the matcher's loops (BPF_COMPLEXITY_LIMIT_JMP_SEQ, docs/kernels.md), and
    every other trigger still works without it. Both entries come from the one compile."""
    try:
        return b.load_func(b"snapd_eval", kind), ""
    except Exception as err:
        return b.load_func(b"snapd_eval_plain", kind), _why(err)


def _why(err: Exception) -> str:
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__


def _load_uprobes(b: Any, kind: int, how: int, refused: str) -> tuple[Any, Any, str]:
    """snapd_uprobe and snapd_uretprobe, or their _plain pair (no string matcher) where the
    verifier refuses the matcher; where it refused snapd_eval's (``refused``), at once."""
    if not refused:
        try:
            return (
                b.load_func(b"snapd_uprobe", kind, None, how),
                b.load_func(b"snapd_uretprobe", kind, None, how),
                "",
            )
        except Exception as err:
            refused = _why(err)
    plain = (
        b.load_func(b"snapd_uprobe_plain", kind, None, how),
        b.load_func(b"snapd_uretprobe_plain", kind, None, how),
    )
    return *plain, refused


def program(source: Path, on_event: Callable[..., Any]) -> Built:
    """Compile probe.bpf.c once and load every program of it; bcc's Exception if the compile
    or a program's verification fails (the string matcher's excepted: see _load_eval)."""
    from bcc import BPF  # the only bcc import in snapd

    b = BPF(src_file=str(source).encode(), cflags=layout.cflags())
    strings_error = ""
    try:
        for fn, table, kind in layout.TAIL_CALLS:
            if fn == b"snapd_eval":
                prog, strings_error = _load_eval(b, getattr(BPF, kind))
            else:
                prog = b.load_func(fn, getattr(BPF, kind))
            b[table][ct.c_int(0)] = ct.c_int(prog.fd)
        b.load_func(b"snapd_sys_enter", BPF.TRACEPOINT)
        b.load_func(b"snapd_sys_exit", BPF.TRACEPOINT)
        b.load_func(b"snapd_raw_enter", BPF.TRACEPOINT)
        b.load_func(b"snapd_tick", BPF.PERF_EVENT)
        b.load_func(b"snapd_cpu_sample", BPF.PERF_EVENT)
        multi = kernel.has(kernel.Feature.UPROBE_MULTI)
        how = bpflink.BPF_TRACE_UPROBE_MULTI if multi else -1
        up, uret, ustrings_error = _load_uprobes(b, BPF.KPROBE, how, strings_error)
        b.load_func(b"snapd_signal_deliver", BPF.TRACEPOINT)
        b.load_func(b"snapd_signal_generate", BPF.TRACEPOINT)
        b[b"events"].open_ring_buffer(on_event)
        b.attach_tracepoint(tp=b"syscalls:sys_enter_clone", fn_name=b"snapd_clone_enter")
        b.attach_tracepoint(tp=b"syscalls:sys_exit_clone", fn_name=b"snapd_clone_exit")
    except BaseException:
        b.cleanup()
        raise
    return Built(b, up, uret, strings_error, multi, ustrings_error)
