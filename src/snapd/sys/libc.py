"""libc, loaded once with ``use_errno`` for every binding in :mod:`snapd.sys`."""

from __future__ import annotations

import ctypes
import os

# glibc by its soname: ctypes.util.find_library("c") runs ldconfig -p, ~12 ms at every start.
LIBC = ctypes.CDLL("libc.so.6", use_errno=True)


class IoVec(ctypes.Structure):
    """struct iovec (include/uapi/linux/uio.h)."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def last_error(what: str, *args: str) -> OSError:
    """``OSError`` for the errno the last libc call left, its message prefixed with ``what``."""
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}" if what else os.strerror(e), *args)
