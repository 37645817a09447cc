"""File-system calls the os module lacks: fallocate(2) and statfs(2)'s f_type."""

from __future__ import annotations

import ctypes

from snapd.sys.libc import LIBC, last_error

_fallocate = LIBC.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_fallocate.restype = ctypes.c_int
_statfs = LIBC.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_statfs.restype = ctypes.c_int

TMPFS_MAGIC = 0x01021994  # include/uapi/linux/magic.h


def fallocate(fd: int, offset: int, length: int) -> None:
    """Reserve blocks (mode 0) so that later writes through a mapping cannot SIGBUS on ENOSPC."""
    if _fallocate(fd, 0, offset, length) != 0:
        raise last_error("")


def fs_type(path: str) -> int:
    """statfs(2) ``f_type`` of the file system holding ``path`` (offset 0 of struct statfs), or
    0 when it cannot be read."""
    buf = ctypes.create_string_buffer(256)
    if _statfs(path.encode(), buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:8], "little", signed=True)
