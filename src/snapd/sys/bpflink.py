"""bpf(BPF_LINK_CREATE) of a uprobe_multi link: one program on a list of offsets of one file,
each with its own BPF cookie and USDT reference counter, for one process or all of them.

The layout is ``union bpf_attr``'s ``link_create`` member (include/uapi/linux/bpf.h, Linux 6.6):
``prog_fd``, ``target_fd``, ``attach_type``, ``flags``, then ``uprobe_multi``: ``path``,
``offsets``, ``ref_ctr_offsets``, ``cookies`` (user pointers), ``cnt``, ``flags``, ``pid``. The
program must have been loaded with ``expected_attach_type`` BPF_TRACE_UPROBE_MULTI
(kernel/bpf/syscall.c bpf_prog_attach_check_attach_type).

What the kernel does with it (kernel/trace/bpf_trace.c bpf_uprobe_multi_link_attach): ``pid``
0 is every process; another pid installs the breakpoints only in that process's mm (the
consumer's filter, uprobe_multi_link_filter) and runs the program only for its threads
(uprobe_prog_run compares the thread group, without a lock, where a perf-event uprobe takes
trace_uprobe.c's filter rwlock at every hit).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from snapd.sys.libc import LIBC, last_error

NR_BPF = 321  # x86_64; arch/x86/entry/syscalls/syscall_64.tbl
BPF_LINK_CREATE = 28  # enum bpf_cmd
BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type (read from this kernel's BTF)
BPF_F_UPROBE_MULTI_RETURN = 1  # uprobe_multi.flags: a uretprobe
ATTR_SIZE = 64  # the link_create part, rounded up; the kernel wants the rest zero
_HEAD = struct.Struct("<IIII")  # prog_fd, target_fd, attach_type, flags
_MULTI = struct.Struct("<QQQQIII")  # path, offsets, ref_ctr_offsets, cookies, cnt, flags, pid


@dataclass(frozen=True)
class Site:
    """One offset of the file, the cookie its hits carry, and its USDT semaphore (0: none)."""

    offset: int
    cookie: int = 0
    ref_ctr_offset: int = 0


def uprobe_multi(
    prog_fd: int, path: bytes, sites: Sequence[Site], *, pid: int = 0, retprobe: bool = False
) -> int:
    """The link's fd; ``OSError`` with the kernel's errno when it refuses."""
    n = len(sites)
    cpath = ctypes.create_string_buffer(path)
    offsets = (ctypes.c_uint64 * n)(*(s.offset for s in sites))
    cookies = (ctypes.c_uint64 * n)(*(s.cookie for s in sites))
    refs = (ctypes.c_uint64 * n)(*(s.ref_ctr_offset for s in sites))
    has_refs = any(s.ref_ctr_offset for s in sites)
    raw = _HEAD.pack(prog_fd, 0, BPF_TRACE_UPROBE_MULTI, 0) + _MULTI.pack(
        ctypes.addressof(cpath),
        ctypes.addressof(offsets),
        ctypes.addressof(refs) if has_refs else 0,
        ctypes.addressof(cookies),
        n,
        BPF_F_UPROBE_MULTI_RETURN if retprobe else 0,
        pid & 0xFFFFFFFF,
    )
    attr = ctypes.create_string_buffer(raw, ATTR_SIZE)
    syscall = LIBC.syscall
    syscall.restype = ctypes.c_long
    fd = int(syscall(ctypes.c_long(NR_BPF), ctypes.c_int(BPF_LINK_CREATE), attr, ctypes.c_uint(ATTR_SIZE)))
    if fd < 0:
        raise last_error(f"BPF_LINK_CREATE uprobe_multi {os.fsdecode(path)}")
    return fd


__all__ = ["BPF_TRACE_UPROBE_MULTI", "Site", "uprobe_multi"]
