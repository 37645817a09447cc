"""mmap(2)/munmap(2): shared mappings of an output file, and anonymous buffers."""

from __future__ import annotations

import ctypes

from snapd.sys.libc import LIBC, last_error

_mmap = LIBC.mmap
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mmap.restype = ctypes.c_void_p
_munmap = LIBC.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_munmap.restype = ctypes.c_int

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED = 1
MAP_PRIVATE = 2
MAP_ANONYMOUS = 0x20
MAP_FAILED = ctypes.c_void_p(-1).value


def mmap_file(fd: int, offset: int, length: int) -> int:
    addr = _mmap(None, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset)
    if addr is None or addr == MAP_FAILED:
        raise last_error("mmap")
    return int(addr)


def mmap_anon(length: int) -> int:
    addr = _mmap(None, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr is None or addr == MAP_FAILED:
        raise last_error("mmap")
    return int(addr)


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        raise last_error("munmap")
