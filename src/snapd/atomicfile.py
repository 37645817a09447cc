"""Publishing a file atomically: the one routine for cores, the catalog's small files and the
daemon's journal.

A file is built under a temp name in its final directory (O_CREAT|O_EXCL|O_NOFOLLOW, so nothing
planted there is followed or reused) and renamed or linked to its name only when complete
(rename(2) replaces atomically; link(2) never replaces). A reader sees the whole file or none; a
crash leaves only the temp file. With ``sync`` the data is fsync'ed before the rename and the
directory after it, so a published file also survives a power loss (fsync(2), "NOTES").

Every temp name starts with :data:`PARTIAL_PREFIX`: hidden (a leading dot), never a core name
(:mod:`snapd.template` refuses a leading dot), never listed, and removed by the catalog's
start-up recovery.
"""

from __future__ import annotations

import contextlib
import os

PARTIAL_PREFIX = ".snapd-partial."
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class AtomicFile:
    """``path`` built in a temp file beside it; :meth:`publish` when complete, :meth:`close`
    always (it removes the temp file unless published).

    With ``dir_fd``, ``path`` is relative to that directory (openat(2) and friends): the store
    never resolves a path it did not create.
    """

    def __init__(self, path: str, *, dir_fd: int | None = None, mode: int = 0o600) -> None:
        head, base = os.path.split(path)
        self.path = path
        self.dir_fd = dir_fd
        self.tmp = os.path.join(head, f"{PARTIAL_PREFIX}{base}.{os.urandom(4).hex()}")
        self.published = False
        self.fd = os.open(self.tmp, _CREATE, mode, dir_fd=dir_fd)
        try:
            os.fchmod(self.fd, mode)  # exactly ``mode``, whatever the umask
        except BaseException:
            self.close()
            raise

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def publish(self, *, replace: bool = True, sync: bool = True) -> os.stat_result:
        """Give the file its name: rename over whatever is there (``replace``), or link, which
        never overwrites and never follows a symlink. Returns the published file's stat."""
        d = self.dir_fd
        if sync:
            os.fsync(self.fd)
        if replace:
            os.replace(self.tmp, self.path, src_dir_fd=d, dst_dir_fd=d)
        else:
            os.link(self.tmp, self.path, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=False)
            os.unlink(self.tmp, dir_fd=d)
        self.published = True
        if sync:
            self._sync_dir()
        return os.fstat(self.fd)

    def _sync_dir(self) -> None:
        head = os.path.dirname(self.path)
        if self.dir_fd is not None and not head:
            os.fsync(self.dir_fd)
            return
        dfd = os.open(head or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self) -> None:
        os.close(self.fd)
        if not self.published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp, dir_fd=self.dir_fd)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomic(
    path: str, data: bytes, *, dir_fd: int | None = None, mode: int = 0o600, sync: bool = True
) -> None:
    """Publish ``data`` as ``path`` (relative to ``dir_fd`` if given), replacing it atomically."""
    with AtomicFile(path, dir_fd=dir_fd, mode=mode) as f:
        f.write(data)
        f.publish(sync=sync)
