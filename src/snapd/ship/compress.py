"""Compression at rest (coredump.conf ``Compress=``): a core becomes ``CORE.zst`` in the ship
container (:mod:`snapd.ship.container`), multi-threaded zstd over the data runs only, so the
holes of a sparse core cost nothing to compress, store or decompress.

``compress_core`` never touches the original; the caller removes it once the catalog points at
the compressed file. :func:`snapd.ship.opencore.open_core` reads the result transparently.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from snapd.ship import container, sparse
from snapd.ship.container import Kind
from snapd.ship.errors import BundleError
from snapd.ship.publish import atomic_output

SUFFIX = ".zst"
DEFAULT_LEVEL = 3  # zstd's own default: ~1:4 on heap pages at hundreds of MB/s per thread


@dataclass(frozen=True)
class Compressed:
    path: str  # the published .zst
    apparent_size: int  # length of the core
    data_bytes: int  # bytes in its data runs (what was compressed)
    disk_bytes: int  # bytes the .zst occupies on disk
    seconds: float

    @property
    def ratio(self) -> float:
        """Data bytes per stored byte."""
        return self.data_bytes / max(1, self.disk_bytes)


def compress_core(
    path: str,
    out: str | None = None,
    *,
    level: int = DEFAULT_LEVEL,
    threads: int = -1,
    replace: bool = False,
) -> Compressed:
    """Compress the core at ``path`` into ``out`` (default ``path + '.zst'``), atomically.

    ``threads``: zstd worker threads (-1: one per CPU; 0: compress in the calling thread)."""
    out = out or path + SUFFIX
    t0 = time.monotonic()
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as err:
        raise BundleError(path, f"cannot read core: {err.strerror}") from err
    try:
        st = os.fstat(src)
        with (
            atomic_output(out, mode=0o600, replace=replace) as fd,
            os.fdopen(os.dup(fd), "wb", buffering=1 << 20) as f,
        ):
            w = container.Writer(f, Kind.CORE, level=level, threads=threads)
            try:
                data = w.add_fd("core", src, mode=st.st_mode)
            except EOFError as err:
                raise BundleError(path, f"the core changed while being compressed: {err}") from err
            w.close()
            f.flush()
    except OSError as err:
        raise BundleError(out, f"cannot write: {err.strerror}") from err
    finally:
        os.close(src)
    return Compressed(out, st.st_size, data, sparse.disk_bytes(out), time.monotonic() - t0)


def decompress_core(path: str, fd: int, limits: container.Limits | None = None) -> int:
    """Write the plain core held by ``path`` (our ``.zst``, a bundle, or a plain zstd file of a
    core such as systemd-coredump's) into ``fd``, sparse. Return the apparent size."""
    kind = container.sniff(path)
    try:
        with open(path, "rb") as f:
            if kind == "zstd":
                container.check_frames(f, path)
                f.seek(0)
                return _plain_zstd(f, path, fd, limits or container.Limits())
            if kind not in ("core", "bundle"):
                raise BundleError(path, "neither a core, a compressed core nor a bundle")
            r = container.Reader(f, path, limits)
            size = -1
            for m in r.members():  # to the end marker: a stream cut short is an error
                if m.name == "core" and size < 0:
                    r.extract(m, fd)
                    size = m.size
            if size < 0:
                raise BundleError(path, "holds no core")
            return size
    except OSError as err:
        raise BundleError(path, err.strerror or str(err)) from err


def _plain_zstd(f: object, path: str, fd: int, limits: container.Limits) -> int:
    import zstandard

    dctx = zstandard.ZstdDecompressor(max_window_size=container.MAX_WINDOW)
    out = sparse.SparseWriter(fd)
    off = 0
    try:
        with dctx.stream_reader(f, read_across_frames=True, closefd=False) as z:  # type: ignore[arg-type]
            while True:
                piece = z.read(sparse.CHUNK)
                if not piece:
                    break
                out.write_at(off, piece)
                off += len(piece)
                if off > limits.size:
                    raise BundleError(path, f"decompresses to more than {limits.size} bytes (limit)")
    except zstandard.ZstdError as err:
        raise BundleError(path, f"corrupt zstd data: {err}") from err
    out.finish(off)
    return off
