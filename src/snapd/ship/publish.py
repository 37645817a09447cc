"""Publishing a file atomically: build it under a temp name in the destination directory, fsync,
then link it into place, so no reader ever sees a partial file under the final name."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from snapd.ship.errors import BundleError

PARTIAL = ".snapd-partial."


@contextlib.contextmanager
def atomic_output(path: str, *, mode: int = 0o600, replace: bool = False) -> Iterator[int]:
    """Yield a writable fd of a temp file beside ``path``; on success it becomes ``path``.

    Without ``replace`` an existing ``path`` is never overwritten (link(2) fails with EEXIST).
    On any exception the temp file is removed and nothing is published."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f"{PARTIAL}{os.getpid()}.{os.urandom(6).hex()}")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        raise BundleError(path, f"cannot create a file beside it: {err.strerror}") from err
    try:
        try:
            yield fd
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if replace:
                os.rename(tmp, path)
            else:
                os.link(tmp, path)
        except FileExistsError as err:
            raise BundleError(path, "already exists; remove it or choose another name") from err
        except OSError as err:
            raise BundleError(path, f"cannot publish: {err.strerror}") from err
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes_atomic(path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (for small state files: textfiles, indexes)."""
    with atomic_output(path, mode=mode, replace=True) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
