"""The mmap copy path, and its pwrite(2) fallback where the output cannot be mapped shared (9p
without a page cache, FUSE direct_io; here: a descriptor open for writing only, which the kernel
refuses to map shared and writable with EACCES, mm/mmap.c do_mmap)."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from snapd.core.memory import WINDOW, Copied, VmReader, copy_runs
from snapd.procfs import PAGE_SIZE

PAGES = 8


@pytest.fixture
def source():
    """PAGES pages of our own memory, each filled with its number + 1; page 3 PROT_NONE, which
    process_vm_readv cannot read (a hole in the copy)."""
    buf = mmap.mmap(-1, PAGES * PAGE_SIZE)
    for p in range(PAGES):
        buf[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = bytes([p + 1]) * PAGE_SIZE
    view = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(view)
    del view
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(addr + 3 * PAGE_SIZE, PAGE_SIZE, 0) == 0
    yield addr
    libc.mprotect(addr + 3 * PAGE_SIZE, PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE)
    buf.close()


def _copy(path: Path, flags: int, runs: list[tuple[int, int, int]], **kw: bool) -> Copied:
    fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, WINDOW + PAGES * PAGE_SIZE)
        reader = VmReader(os.getpid())
        try:
            return copy_runs(reader, fd, runs, **kw)
        finally:
            reader.close()
    finally:
        os.close(fd)


@pytest.mark.lane
def test_pwrite_when_the_output_cannot_be_mapped_shared(source: int, tmp_path: Path) -> None:
    # pages 0-5 at offset 0 (page 3 unreadable), pages 6-7 in the next window of the file
    runs = [(0, source, 6 * PAGE_SIZE), (WINDOW, source + 6 * PAGE_SIZE, 2 * PAGE_SIZE)]
    mapped = _copy(tmp_path / "mapped", os.O_RDWR, runs)
    written = _copy(tmp_path / "written", os.O_WRONLY, runs)
    assert mapped == (7 * PAGE_SIZE, 1, False)
    assert written == (7 * PAGE_SIZE, 1, True)
    a, b = (tmp_path / "mapped").read_bytes(), (tmp_path / "written").read_bytes()
    assert a == b
    assert a[2 * PAGE_SIZE : 3 * PAGE_SIZE] == b"\3" * PAGE_SIZE
    assert a[3 * PAGE_SIZE : 4 * PAGE_SIZE] == b"\0" * PAGE_SIZE  # the unreadable page
    assert a[WINDOW + PAGE_SIZE : WINDOW + 2 * PAGE_SIZE] == b"\10" * PAGE_SIZE
    # between the runs nothing was written: still a hole in both files
    with open(tmp_path / "written", "rb") as f:
        assert os.lseek(f.fileno(), 0, os.SEEK_HOLE) < WINDOW


def test_calibration_sees_the_refusal(source: int, tmp_path: Path) -> None:
    """Calibration measures the mapped path only (fallback=False): where it is refused, it
    measures nothing and the strategy never picks mmap."""
    with pytest.raises(PermissionError):
        _copy(tmp_path / "refused", os.O_WRONLY, [(0, source, PAGE_SIZE)], fallback=False)
