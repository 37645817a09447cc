"""Publishing ship's outputs (bundles, compressed cores, fetched objects, state files) with the
one atomic-publish routine, snapd.atomicfile, turning its OSError into ship's one-line errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from snapd.atomicfile import AtomicFile
from snapd.ship.errors import BundleError


@contextlib.contextmanager
def atomic_output(path: str, *, mode: int = 0o600, replace: bool = False) -> Iterator[int]:
    """Yield a writable fd of a temp file beside ``path``; on success it becomes ``path``.

    Without ``replace`` an existing ``path`` is never overwritten (link(2) fails with EEXIST).
    On any exception the temp file is removed and nothing is published."""
    try:
        out = AtomicFile(os.path.abspath(path), mode=mode)
    except OSError as err:
        raise BundleError(path, f"cannot create a file beside it: {err.strerror}") from err
    with out:
        yield out.fd
        try:
            out.publish(replace=replace, sync=True)
        except FileExistsError as err:
            raise BundleError(path, "already exists; remove it or choose another name") from err
        except OSError as err:
            raise BundleError(path, f"cannot publish: {err.strerror}") from err


def write_bytes_atomic(path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (small files others read: a node_exporter
    textfile, an index; state files pass mode=0o600)."""
    with atomic_output(path, mode=mode, replace=True) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
