"""Helpers shared by the store tests and the child processes they start (importable by name)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from snapd.core.info import CoreInfo

# Loaded by path: child processes import this module without the tests directory on sys.path.
_root = importlib.util.spec_from_file_location(
    "_snapd_testlib", Path(__file__).resolve().parents[1] / "snapd_testlib.py"
)
assert _root is not None and _root.loader is not None
_mod = importlib.util.module_from_spec(_root)
_root.loader.exec_module(_mod)
#: tests/snapd_testlib.py's poller (no sleep-then-assert).
wait_for: Callable[..., object] = _mod.wait_for


def write_like_core_writer(path: str, data: bytes = b"\x7fELF" + b"\0" * 4092, pid: int = 1) -> CoreInfo:
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
        comm="victim",
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
    )
