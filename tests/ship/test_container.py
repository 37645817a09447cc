"""The ship container, compressed cores and open_core: holes kept, hostile streams refused.

No root needed: the "cores" here are sparse files written by the test (the container does not
look inside a core); tests/ship/test_bundle.py uses real ones."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
import zstandard

from snapd.ship import container, sparse
from snapd.ship.bundle import open_bundle, read_manifest
from snapd.ship.compress import compress_core
from snapd.ship.container import Kind, Limits
from snapd.ship.errors import BundleError
from snapd.ship.opencore import open_core

GiB = 1 << 30


def sparse_file(path: Path, unit: int = GiB) -> Path:
    """3 units apparent (3 GiB), ~7 MiB of data in three runs (one ending in a zero page)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, b"\x7fELF" + os.urandom(8000), 0)
        os.pwrite(fd, os.urandom(5 << 20), unit)
        os.pwrite(fd, b"heap" * 300000 + bytes(8192), 2 * unit)
        os.ftruncate(fd, 3 * unit)
    finally:
        os.close(fd)
    return path


def same_content(a: Path | str, b: Path | str) -> bool:
    """cmp(1) without reading holes: outside both files' data runs both read as zeros."""
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    try:
        size = os.fstat(fa).st_size
        if size != os.fstat(fb).st_size:
            return False
        for off, n in sparse.data_runs(fa) + sparse.data_runs(fb):
            for pos in range(off, off + n, 1 << 20):
                step = min(1 << 20, off + n - pos)
                if os.pread(fa, step, pos) != os.pread(fb, step, pos):
                    return False
        return True
    finally:
        os.close(fa)
        os.close(fb)


def test_data_runs_skip_holes(tmp_path):
    p = sparse_file(tmp_path / "core")
    fd = os.open(p, os.O_RDONLY)
    try:
        runs = sparse.data_runs(fd)
    finally:
        os.close(fd)
    assert runs[0][0] == 0 and runs[1][0] == GiB and runs[2][0] == 2 * GiB
    assert sparse.data_bytes(runs) < 16 << 20


def test_compress_round_trip_keeps_holes(tmp_path):
    core = sparse_file(tmp_path / "core")
    r = compress_core(str(core))
    assert r.path == f"{core}.zst" and Path(r.path).stat().st_mode & 0o777 == 0o600
    assert r.apparent_size == 3 * GiB and r.data_bytes < 16 << 20
    assert r.disk_bytes < 8 << 20  # the random MiBs do not compress, the rest does
    with open_core(r.path) as plain:
        assert plain != r.path
        assert os.stat(plain).st_size == 3 * GiB
        assert sparse.disk_bytes(plain) < 16 << 20  # holes came back as holes
        assert same_content(core, plain)
        tmp = os.path.dirname(plain)
        assert os.stat(tmp).st_mode & 0o777 == 0o700
    assert not os.path.exists(tmp)  # removed after the block


def test_open_core_passes_a_plain_core_through(tmp_path):
    core = sparse_file(tmp_path / "core")
    with open_core(str(core)) as plain:
        assert plain == str(core)


def test_plain_zstd_core_gets_its_holes_back(tmp_path):
    """systemd-coredump's Compress= writes plain zstd of the whole file, zeros included."""
    core = sparse_file(tmp_path / "core", 64 << 20)
    subprocess.run(["zstd", "-q", "-T0", str(core), "-o", str(tmp_path / "core.zst")], check=True)
    with open_core(str(tmp_path / "core.zst")) as plain:
        assert same_content(core, plain)
        assert sparse.disk_bytes(plain) < 16 << 20


def test_compress_never_replaces(tmp_path):
    core = sparse_file(tmp_path / "core")
    (tmp_path / "core.zst").write_bytes(b"keep me")
    with pytest.raises(BundleError, match="already exists"):
        compress_core(str(core))
    assert (tmp_path / "core.zst").read_bytes() == b"keep me"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".snapd-partial")]


# --- hostile streams ------------------------------------------------------------------------


def raw_stream(
    *members: tuple[str, int, list[tuple[int, int]], bytes],
    end: bool = True,
    kind: int = Kind.BUNDLE,
    magic: bytes = container.MAGIC,
    version: int = 1,
) -> bytes:
    body = [struct.pack("<8sII", magic, version, kind)]
    for name, size, runs, data in members:
        raw = name.encode()
        body += [b"F", struct.pack("<I", len(raw)), raw, struct.pack("<QIQ", size, 0o644, len(runs))]
        body += [struct.pack("<QQ", o, n) for o, n in runs]
        body.append(data)
    if end:
        body.append(b"E")
    return zstandard.ZstdCompressor().compress(b"".join(body))


MANIFEST = ("manifest.json", 2, [(0, 2)], b"{}")
CORE = ("core", 8192, [(4096, 4)], b"\x7fELF")


def unpack(tmp_path: Path, data: bytes, limits: Limits | None = None) -> object:
    b = tmp_path / "b.snapd"
    b.write_bytes(data)
    return open_bundle(str(b), str(tmp_path / "out"), limits)


def test_a_minimal_stream_unpacks(tmp_path):
    u = unpack(tmp_path, raw_stream(MANIFEST, CORE))
    core = Path(u.core)  # type: ignore[attr-defined]
    assert core.read_bytes()[4096:4100] == b"\x7fELF" and core.stat().st_size == 8192
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([MANIFEST, CORE, ("root/../../etc/evil", 1, [(0, 1)], b"x")], "unsafe member name"),
        ([MANIFEST, CORE, ("/etc/evil", 1, [(0, 1)], b"x")], "unsafe member name"),
        ([MANIFEST, CORE, ("root/a//b", 1, [(0, 1)], b"x")], "unsafe member name"),
        ([MANIFEST, ("core", 10, [(0, 8), (4, 4)], b"x" * 12)], "overlaps"),
        ([MANIFEST, ("core", 10, [(8, 4)], b"x" * 4)], "past size"),
        ([MANIFEST, ("core", 10, [(0, 0)], b"")], "empty"),
        ([MANIFEST, CORE, CORE], "appears twice"),
        ([CORE, MANIFEST], "no manifest.json first"),
        ([MANIFEST], "holds no core"),
        ([("manifest.json", 5, [(0, 5)], b"[1,2]"), CORE], "not valid"),
    ],
)
def test_hostile_members_are_refused(tmp_path, members, message):
    with pytest.raises(BundleError, match=message):
        unpack(tmp_path, raw_stream(*members))
    assert not (tmp_path / "etc").exists() and not Path("/etc/evil").exists()


def test_truncated_and_garbled_streams(tmp_path):
    whole = raw_stream(MANIFEST, CORE)
    with pytest.raises(BundleError, match="truncated"):
        unpack(tmp_path, raw_stream(MANIFEST, CORE, end=False))
    with pytest.raises(BundleError, match=r"truncated|corrupt"):
        unpack(tmp_path, whole[: len(whole) // 2])
    with pytest.raises(BundleError, match="bad magic"):
        unpack(tmp_path, raw_stream(MANIFEST, CORE, magic=b"NOTSNAPD"))
    with pytest.raises(BundleError, match="version 9"):
        unpack(tmp_path, raw_stream(MANIFEST, CORE, version=9))


def test_limits_bound_what_a_stream_may_claim(tmp_path):
    big = ("core", 1 << 46, [(0, 4)], b"\x7fELF")
    with pytest.raises(BundleError, match="exceeds the limit"):
        unpack(tmp_path, raw_stream(MANIFEST, big), Limits(size=1 << 40))
    many = ("core", 1 << 30, [(i * 8192, 1) for i in range(100)], b"x" * 100)
    with pytest.raises(BundleError, match="runs exceed"):
        unpack(tmp_path, raw_stream(MANIFEST, many), Limits(runs=10))
    with pytest.raises(BundleError, match="bytes of data"):
        unpack(tmp_path, raw_stream(MANIFEST, ("core", 100, [(0, 100)], b"y" * 100)), Limits(data=50))


def test_unpack_refuses_a_directory_with_something_in_it(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "core").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="empty directory"):
        unpack(tmp_path, raw_stream(MANIFEST, CORE))


def test_unknown_members_are_not_written(tmp_path):
    unpack(tmp_path, raw_stream(MANIFEST, CORE, ("notes/extra", 1, [(0, 1)], b"z")))
    assert sorted(os.listdir(tmp_path / "out")) == ["core"]


def test_read_manifest_reads_only_the_first_member(tmp_path):
    b = tmp_path / "b.snapd"
    with open(b, "wb") as f:
        w = container.Writer(f, Kind.BUNDLE, threads=0)
        w.add_bytes("manifest.json", b'{"pid": 7, "comm": "x"}')
        w.add_bytes("core", os.urandom(16 << 20))
        w.close()
    m = read_manifest(str(b))
    assert (m.pid, m.comm) == (7, "x") and m.bundle_bytes == b.stat().st_size
    os.truncate(b, 8 << 20)  # a bundle cut short is refused, even where its manifest is whole
    with pytest.raises(BundleError, match="truncated"):
        read_manifest(str(b))


def test_truncated_compressed_files_are_errors_not_short_cores(tmp_path):
    """A decompressor reports a frame cut short as a clean end of data: both kinds are checked."""
    core = sparse_file(tmp_path / "core", 8 << 20)
    subprocess.run(["zstd", "-q", str(core), "-o", str(tmp_path / "plain.zst")], check=True)
    data = (tmp_path / "plain.zst").read_bytes()
    (tmp_path / "plain.zst").write_bytes(data[: len(data) - 100])
    with pytest.raises(BundleError, match="truncated"), open_core(str(tmp_path / "plain.zst")):
        pass
    ours = compress_core(str(core)).path
    data = Path(ours).read_bytes()
    for cut in (40, len(data) // 2, len(data) - 10):
        Path(ours).write_bytes(data[:cut])
        with pytest.raises(BundleError, match=r"truncated|corrupt"), open_core(ours):
            pass
