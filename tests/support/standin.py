"""A stand-in for snapd.core.write_core, for catalog and ctl tests that need no real target."""

from __future__ import annotations

import os

from snapd.core.info import CoreInfo


def write_like_core_writer(
    path: str,
    data: bytes = b"\x7fELF" + b"\0" * 4092,
    pid: int = 1,
    comm: str = "",
    cmdline: list[str] | None = None,
) -> CoreInfo:
    """A stand-in for snapd.core.write_core that follows its publishing contract (temp file in
    the same directory, linked into place, never replacing), for catalog and ctl tests."""

    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".snapd-partial.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces: FileExistsError if anything holds the name
    finally:
        os.unlink(tmp)
    st = os.stat(path, follow_symlinks=False)
    return CoreInfo(
        pid=pid,
        path=path,
        comm=comm,
        exe="/usr/bin/victim",
        threads=2,
        mappings=10,
        dumped_mappings=8,
        apparent_size=st.st_size,
        disk_bytes=st.st_blocks * 512,
        memory_bytes=len(data),
        content="default",
        snapshot="frozen",
        started=0.0,
        freeze_seconds=0.002,
        elapsed_seconds=0.05,
        cmdline=cmdline or [],
    )
