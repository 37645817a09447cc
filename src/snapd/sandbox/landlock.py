"""Landlock (Documentation/userspace-api/landlock.rst): an unprivileged process restricts itself.

Only what the running kernel supports is asked for: the ABI version is probed once
(landlock_create_ruleset with LANDLOCK_CREATE_RULESET_VERSION) and every right beyond it is left
out, so one ruleset works from ABI 1 (5.13) to today. A kernel without Landlock (or with it left
out of the ``lsm=`` list) answers ENOSYS/EOPNOTSUPP: :func:`abi` returns 0 and the caller says so.
The restriction requires no_new_privs (or CAP_SYS_ADMIN) and lasts for the process and its
children; it governs opening files by path, not the fds already open.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat
import struct
from collections.abc import Iterable
from enum import IntFlag

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# include/uapi/asm-generic/unistd.h (the same numbers on every architecture since 5.13)
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1


class FS(IntFlag):
    """LANDLOCK_ACCESS_FS_* (include/uapi/linux/landlock.h)."""

    EXECUTE = 1 << 0
    WRITE_FILE = 1 << 1
    READ_FILE = 1 << 2
    READ_DIR = 1 << 3
    REMOVE_DIR = 1 << 4
    REMOVE_FILE = 1 << 5
    MAKE_CHAR = 1 << 6
    MAKE_DIR = 1 << 7
    MAKE_REG = 1 << 8
    MAKE_SOCK = 1 << 9
    MAKE_FIFO = 1 << 10
    MAKE_BLOCK = 1 << 11
    MAKE_SYM = 1 << 12
    REFER = 1 << 13  # ABI 2
    TRUNCATE = 1 << 14  # ABI 3
    IOCTL_DEV = 1 << 15  # ABI 5


class NET(IntFlag):
    BIND_TCP = 1 << 0  # ABI 4
    CONNECT_TCP = 1 << 1


class SCOPE(IntFlag):
    ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
    SIGNAL = 1 << 1


#: the rights that may be granted on a regular file (not a directory)
FILE_RIGHTS = FS.EXECUTE | FS.WRITE_FILE | FS.READ_FILE | FS.TRUNCATE | FS.IOCTL_DEV
READ = FS.READ_FILE | FS.READ_DIR
WRITE = FS.WRITE_FILE | FS.REMOVE_DIR | FS.REMOVE_FILE | FS.MAKE_DIR | FS.MAKE_REG | FS.TRUNCATE


def _fs_rights(version: int) -> FS:
    rights = FS((1 << 13) - 1)
    if version >= 2:
        rights |= FS.REFER
    if version >= 3:
        rights |= FS.TRUNCATE
    if version >= 5:
        rights |= FS.IOCTL_DEV
    return rights


class LandlockError(OSError):
    pass


@functools.cache
def abi() -> int:
    """The kernel's Landlock ABI version, 0 if it has none (cached: it cannot change)."""
    v = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return int(v) if v > 0 else 0


def _check(rc: int, what: str) -> int:
    if rc < 0:
        e = ctypes.get_errno()
        raise LandlockError(e, f"landlock {what}: {os.strerror(e)}")
    return rc


def restrict(
    read: Iterable[str | int],
    write: Iterable[str | int] = (),
    network: bool = False,
) -> str:
    """Allow reading beneath ``read``, writing beneath ``write``, nothing else by path; no TCP
    unless ``network``; no signals or abstract unix sockets outside the domain (ABI 6).

    A path may be an open fd (e.g. of the one file to read); paths that do not exist are
    skipped. Returns what was applied, for the caller to report.
    Raises :class:`LandlockError` if the kernel has no Landlock."""
    version = abi()
    if not version:
        raise LandlockError(errno.EOPNOTSUPP, "landlock is not available on this kernel")
    fs = _fs_rights(version)
    net = 0 if network or version < 4 else int(NET.BIND_TCP | NET.CONNECT_TCP)
    scoped = int(SCOPE.ABSTRACT_UNIX_SOCKET | SCOPE.SIGNAL) if version >= 6 else 0
    if version >= 6:
        attr = struct.pack("<QQQ", int(fs), net, scoped)
    elif version >= 4:
        attr = struct.pack("<QQ", int(fs), net)
    else:
        attr = struct.pack("<Q", int(fs))
    buf = ctypes.create_string_buffer(attr, len(attr))
    rfd = _check(
        _libc.syscall(_SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)), "create"
    )
    try:
        for paths, rights in ((read, READ), (write, READ | WRITE)):
            for p in paths:
                _add(rfd, p, FS(rights & fs))
        _check(_libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        _check(_libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(rfd), ctypes.c_uint32(0)), "restrict_self")
    finally:
        os.close(rfd)
    parts = [f"landlock ABI {version}: read-only beneath allowed paths"]
    if write:
        parts.append("writes beneath the cache")
    parts.append("TCP allowed" if network or version < 4 else "no TCP")
    if scoped:
        parts.append("signals scoped")
    return ", ".join(parts)


def _add(rfd: int, path: str | int, rights: FS) -> None:
    """One LANDLOCK_RULE_PATH_BENEATH rule; ``path`` may be an open fd (a file or directory)."""
    own = isinstance(path, str)
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC) if isinstance(path, str) else path
    except OSError:
        return  # absent or unreachable: nothing to allow
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        attr = struct.pack("<Qi", int(rights), fd)  # struct landlock_path_beneath_attr is packed
        buf = ctypes.create_string_buffer(attr, len(attr))
        _check(
            _libc.syscall(
                _SYS_ADD_RULE, ctypes.c_int(rfd), ctypes.c_int(_RULE_PATH_BENEATH), buf, ctypes.c_uint32(0)
            ),
            f"add_rule {path}",
        )
    finally:
        if own:
            with contextlib.suppress(OSError):
                os.close(fd)
