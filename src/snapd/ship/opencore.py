"""``open_core(path)``: a plain, sparse core file for whatever takes a core, given a core, a
compressed core (``.zst``, ours or plain zstd) or a bundle.

A plain core is handed over as it is; anything else is decompressed into a private temporary
directory (mode 0700) that is removed when the ``with`` block ends. Large temp files go under
``$SNAPD_TMPDIR``, else ``$TMPDIR``, else /var/tmp (often not RAM-backed, unlike /tmp).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from snapd.ship import container
from snapd.ship.compress import decompress_core
from snapd.ship.errors import BundleError


def scratch_root() -> str:
    for var in ("SNAPD_TMPDIR", "TMPDIR"):
        if os.environ.get(var):
            return os.environ[var]
    return "/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()


@contextlib.contextmanager
def private_dir(prefix: str = "snapd-") -> Iterator[str]:
    """A fresh directory only we can enter (mkdtemp creates it 0700), removed afterwards."""
    d = tempfile.mkdtemp(prefix=prefix, dir=scratch_root())
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def is_packed(path: str) -> bool:
    """True for a compressed core or a bundle: something :func:`open_core` must unpack."""
    return container.sniff(path) in ("core", "bundle", "zstd")


@contextlib.contextmanager
def open_core(path: str) -> Iterator[str]:
    """Yield a path to a plain ELF core holding what ``path`` holds (``path`` itself if it is one).

    A file that is neither is yielded unchanged, so the caller's own reader reports it."""
    try:
        packed = is_packed(path)
    except BundleError as err:
        if not isinstance(err.__cause__, OSError):
            raise  # a zstd file cut short: say so, not "bad ELF magic"
        packed = False  # unreadable: let the caller's open() say why
    if not packed:
        yield path
        return
    with private_dir("snapd-core-") as d:
        out = os.path.join(d, "core")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            decompress_core(path, fd)
        finally:
            os.close(fd)
        yield out
