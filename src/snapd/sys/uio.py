"""process_vm_readv(2): copy another process's memory, many ranges per call."""

from __future__ import annotations

import ctypes

from snapd.sys.libc import LIBC, IoVec, last_error

_pvr = LIBC.process_vm_readv
_pvr.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_pvr.restype = ctypes.c_ssize_t

IOV_MAX = 1024


def process_vm_readv(pid: int, pairs: list[tuple[int, int, int]]) -> int:
    """Copy ``[(local_addr, remote_addr, length), ...]`` (at most IOV_MAX) from ``pid``.

    Returns the bytes copied; the copy stops at the first remote page that cannot be read
    (mm/process_vm_access.c stops at the first failed page and reports the partial count).
    """
    n = len(pairs)
    local = (IoVec * n)()
    remote = (IoVec * n)()
    for i, (laddr, raddr, length) in enumerate(pairs):
        local[i].iov_base = laddr
        local[i].iov_len = length
        remote[i].iov_base = raddr
        remote[i].iov_len = length
    r = int(_pvr(pid, local, n, remote, n, 0))
    if r < 0:
        raise last_error(f"process_vm_readv({pid})")
    return r
