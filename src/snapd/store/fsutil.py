"""Directory-fd based file operations: the store never resolves a path it did not create.

Every name inside the state and cores directories is reached with ``dir_fd=`` (openat(2),
unlinkat(2), fstatat(2) with AT_SYMLINK_NOFOLLOW) and opened with ``O_NOFOLLOW``, so a symlink
planted in the store is seen as a symlink, never followed; names are single components
(checked by :func:`check_name`), so nothing can climb out with ``..``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time

from snapd.store.errors import UnsafePath

log = logging.getLogger("snapd.store")

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePath(name, "not a single file name inside the store")
    return name


def open_dir(path: str, mode: int = 0o700, *, at: int | None = None, label: str = "") -> int:
    """Open (creating with ``mode`` if missing) a directory we own; refuse symlinks and dirs that
    another user owns or that others may write into."""
    shown = label or path
    try:
        if at is None:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode, dir_fd=at)
        fd = os.open(path, DIR_FLAGS, dir_fd=at)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(shown, "is a symlink or not a directory; the store refuses it") from err
        raise UnsafePath(shown, f"cannot open directory: {err.strerror}") from err
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafePath(
                shown, f"owned by uid {st.st_uid}, not by us (uid {os.geteuid()}); fix its owner"
            )
        if st.st_mode & 0o022:
            raise UnsafePath(
                shown,
                f"mode {stat.S_IMODE(st.st_mode):04o} lets others write into it; chmod go-w it",
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(check_name(name), dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def unlink_at(dir_fd: int, name: str) -> bool:
    """unlinkat(2): removes the name itself (a symlink is removed, its target untouched)."""
    try:
        os.unlink(check_name(name), dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False


def await_free(dir_fd: int, want: int, timeout: float) -> int:
    """Wait (polling fstatvfs(3), at most ``timeout`` s) until ``want`` bytes are free on the file
    system of ``dir_fd``; the bytes free when it returns.

    An unlinked file's blocks come back when its inode's last reference goes, which is not
    always at the last close: a Landlock rule naming the file (a sandboxed reader's, see
    snapd.sandbox.landlock) holds the inode until its domain is freed, after an RCU grace period
    and a workqueue pass (security/landlock/ruleset.c landlock_put_ruleset_deferred), tens of
    milliseconds after the reader exited."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        vfs = os.fstatvfs(dir_fd)
        free = vfs.f_bavail * vfs.f_frsize
        if free >= want or time.monotonic() >= deadline:
            return free
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def is_own_regular(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


def drop_core(cores_fd: int, cores_dir: str, name: str, *, only_ours: bool) -> bool:
    """Remove core file ``name``; with ``only_ours``, only if it is what our writer makes (a
    regular file of ours with one link). Anything else planted under our name (a symlink, a hard
    link) is left for a human rather than guessed at; it is never listed."""
    st = lstat_at(cores_fd, name)
    if st is None:
        return False
    if only_ours and not is_own_regular(st):
        log.warning("%s: not a regular file of ours; left in place", os.path.join(cores_dir, name))
        return False
    return unlink_at(cores_fd, name)


def read_small(dir_fd: int, name: str, limit: int = 1 << 20) -> bytes | None:
    """Read a small regular file by name, never following a symlink; ``None`` if missing."""
    try:
        fd = os.open(
            check_name(name),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
            dir_fd=dir_fd,
        )
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(name, "not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)
