"""The ship container: named files with their holes, in one multi-threaded zstd stream.

Both a bundle and a compressed core (``core.zst``) are this format, so a hole costs a run-list
entry and never a compressed run of zeros, and a reader writes the holes back with a seek::

    zstd frames of:  MAGIC  u32 version  u32 kind
                     'F' u32 namelen name  u64 size  u32 mode  u64 nruns  nruns x (u64 off, u64 len)
                         then the bytes of the runs, in order
                     ...
                     'E'

All integers little-endian. The stream is hostile input to a reader: every count and length is
checked against :class:`Limits` before anything is allocated or written, names must be relative
paths without ``..``, and a stream that ends before 'E' is an error, never a short file.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from snapd.ship import sparse
from snapd.ship.errors import BundleError

MAGIC = b"SNAPDSHP"
VERSION = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ELF_MAGIC = b"\x7fELF"
#: zstd windows above this are refused (a window is memory the decompressor must hold)
MAX_WINDOW = 1 << 27

_HEAD = struct.Struct("<8sII")
_U32 = struct.Struct("<I")
_FILE = struct.Struct("<QIQ")
_RUN = struct.Struct("<QQ")


class Kind(enum.IntEnum):
    BUNDLE = 1
    CORE = 2


@dataclass(frozen=True)
class Limits:
    """Bounds on what a reader accepts; the defaults fit any real core of a 64-bit process."""

    members: int = 65536
    name: int = 4096
    size: int = 1 << 47  # apparent size of one member (the x86_64 user address space)
    runs: int = 1 << 22
    data: int = 1 << 40  # data bytes written out over the whole stream
    small: int = 64 << 20  # a member read into memory (manifest, JSON records)


class Writer:
    """Write a container to ``out`` (a binary file object; closed by the caller)."""

    def __init__(self, out: BinaryIO, kind: Kind, *, level: int = 3, threads: int = -1) -> None:
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        self._z = cctx.stream_writer(out, closefd=False)
        self._z.write(_HEAD.pack(MAGIC, VERSION, int(kind)))
        self.data_bytes = 0

    def _header(self, name: str, size: int, mode: int, runs: list[sparse.Run]) -> None:
        raw = name.encode()
        parts = [b"F", _U32.pack(len(raw)), raw, _FILE.pack(size, mode & 0o7777, len(runs))]
        parts += [_RUN.pack(off, n) for off, n in runs]
        self._z.write(b"".join(parts))

    def add_fd(self, name: str, fd: int, *, mode: int = 0o644, runs: list[sparse.Run] | None = None) -> int:
        """Add the open file ``fd`` (its data runs only); return the data bytes stored."""
        size = os.fstat(fd).st_size
        runs = sparse.data_runs(fd, size) if runs is None else runs
        self._header(check_name(name), size, mode, runs)
        n = 0
        for piece in sparse.read_runs(fd, runs):
            self._z.write(piece)
            n += len(piece)
        self.data_bytes += n
        return n

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o644) -> None:
        self._header(check_name(name), len(data), mode, [(0, len(data))] if data else [])
        self._z.write(data)
        self.data_bytes += len(data)

    def close(self) -> None:
        self._z.write(b"E")
        self._z.flush(zstandard.FLUSH_FRAME)
        self._z.close()  # type: ignore[no-untyped-call]


def check_name(name: str) -> str:
    """A member name: a relative path of plain components (no '', '.', '..', NUL or backslash)."""
    parts = name.split("/")
    if (
        not name
        or len(name.encode()) > 4096
        or "\0" in name
        or "\\" in name
        or any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts)
    ):
        raise ValueError(f"unsafe member name {name!r}")
    return name


@dataclass
class Member:
    name: str
    size: int
    mode: int
    runs: list[sparse.Run]

    @property
    def data_bytes(self) -> int:
        return sparse.data_bytes(self.runs)


class Reader:
    """Read a container from ``src``; ``path`` names it in errors."""

    def __init__(self, src: BinaryIO, path: str, limits: Limits | None = None) -> None:
        self.path = path
        self.limits = limits or Limits()
        # A frame cut short decompresses as a clean end of data: check the structure first.
        start = src.tell()
        check_frames(src, path)
        src.seek(start)
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self._z = dctx.stream_reader(src, read_across_frames=True, closefd=False)
        self._pending = 0  # unread data bytes of the current member
        self._data = 0
        magic, version, kind = _HEAD.unpack(self._read(_HEAD.size, "the header"))
        if magic != MAGIC:
            raise BundleError(path, "not a snapd bundle or compressed core (bad magic)")
        if version != VERSION:
            raise BundleError(path, f"format version {version} is not supported (this snapd reads {VERSION})")
        try:
            self.kind = Kind(kind)
        except ValueError:
            raise BundleError(path, f"unknown container kind {kind}") from None

    def _read(self, n: int, what: str) -> bytes:
        out = bytearray()
        try:
            while len(out) < n:
                piece = self._z.read(min(n - len(out), sparse.CHUNK))
                if not piece:
                    raise BundleError(self.path, f"truncated: the stream ends inside {what}")
                out += piece
        except zstandard.ZstdError as err:
            raise BundleError(self.path, f"corrupt zstd data in {what}: {err}") from err
        return bytes(out)

    def _bad(self, msg: str) -> BundleError:
        return BundleError(self.path, msg)

    def members(self) -> Iterator[Member]:
        """Yield each member; its data must be consumed (``extract``/``read_small``) or is skipped."""
        count = 0
        while True:
            if self._pending:
                self._skip(self._pending)
            tag = self._read(1, "a member tag")
            if tag == b"E":
                self._trailer()
                return
            if tag != b"F":
                raise self._bad(f"corrupt: unknown member tag {tag!r}")
            count += 1
            if count > self.limits.members:
                raise self._bad(f"more than {self.limits.members} members")
            (nlen,) = _U32.unpack(self._read(4, "a member name length"))
            if nlen > self.limits.name:
                raise self._bad(f"member name of {nlen} bytes (limit {self.limits.name})")
            raw = self._read(nlen, "a member name")
            try:
                name = check_name(raw.decode())
            except (UnicodeDecodeError, ValueError):
                raise self._bad(f"unsafe member name {raw[:80]!r}") from None
            size, mode, nruns = _FILE.unpack(self._read(_FILE.size, f"the header of {name}"))
            if size > self.limits.size:
                raise self._bad(f"{name}: size {size} exceeds the limit {self.limits.size}")
            if nruns > self.limits.runs:
                raise self._bad(f"{name}: {nruns} runs exceed the limit {self.limits.runs}")
            table = self._read(nruns * _RUN.size, f"the run table of {name}")
            runs = [_RUN.unpack_from(table, i * _RUN.size) for i in range(nruns)]
            end = 0
            for off, n in runs:
                if n == 0 or off < end or off + n > size:
                    raise self._bad(f"{name}: run ({off}, {n}) overlaps, is empty or lies past size {size}")
                end = off + n
            m = Member(name, size, mode & 0o777, runs)
            self._data += m.data_bytes
            if self._data > self.limits.data:
                raise self._bad(f"more than {self.limits.data} bytes of data (limit)")
            self._pending = m.data_bytes
            yield m

    def _trailer(self) -> None:
        """Read past 'E' to the end, so zstd checks the frame's checksum (XXH64)."""
        try:
            if self._z.read(1):
                raise BundleError(self.path, "corrupt: data after the end marker")
        except zstandard.ZstdError as err:
            raise BundleError(self.path, f"corrupt zstd data at the end: {err}") from err

    def _skip(self, n: int) -> None:
        while n:
            step = min(n, sparse.CHUNK)
            self._read(step, "member data")
            n -= step
        self._pending = 0

    def read_small(self, m: Member) -> bytes:
        """The contents of a small member, holes as zeros (bounded by ``Limits.small``)."""
        if m.size > self.limits.small:
            raise self._bad(f"{m.name}: {m.size} bytes is too large for a record (limit {self.limits.small})")
        buf = bytearray(m.size)
        for off, n in m.runs:
            buf[off : off + n] = self._read(n, m.name)
        self._pending = 0
        return bytes(buf)

    def extract(self, m: Member, fd: int) -> int:
        """Write member ``m`` into ``fd`` with its holes; return the data bytes written."""
        out = sparse.SparseWriter(fd)
        for off, n in m.runs:
            done = 0
            while done < n:
                step = min(sparse.CHUNK, n - done)
                out.write_at(off + done, self._read(step, m.name))
                done += step
        out.finish(m.size)
        self._pending = 0
        return out.written


def sniff(path: str) -> str:
    """What a file is: 'elf', 'bundle', 'core' (our compressed core), 'zstd' (another zstd file,
    e.g. systemd-coredump's), or 'unknown'."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head == ELF_MAGIC:
                return "elf"
            if head != ZSTD_MAGIC:
                return "unknown"
            f.seek(0)
            try:
                z = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(f)
                first = z.read(_HEAD.size)
            except zstandard.ZstdError:
                return "unknown"
    except OSError as err:
        raise BundleError(path, err.strerror or str(err)) from err
    if len(first) < _HEAD.size:
        raise BundleError(path, "truncated: the zstd stream ends in its first bytes")
    magic, _version, kind = _HEAD.unpack(first)
    if magic == MAGIC:
        return {Kind.BUNDLE: "bundle", Kind.CORE: "core"}.get(kind, "unknown")
    return "zstd"


_SKIPPABLE = range(0x184D2A50, 0x184D2A60)


def check_frames(f: BinaryIO, path: str) -> None:
    """Walk the frames of a zstd file (RFC 8878 section 3.1: frame header, 3-byte block headers,
    optional checksum) without decompressing, and raise :class:`BundleError` if the last one is
    cut short: a decompressing reader reports a truncated frame as a clean end of data."""
    size = os.fstat(f.fileno()).st_size
    pos = 0
    while pos < size:
        f.seek(pos)
        head = f.read(18)
        if len(head) < 8:
            raise BundleError(path, f"truncated zstd frame at byte {pos}")
        (magic,) = struct.unpack_from("<I", head)
        if magic in _SKIPPABLE:
            pos += 8 + struct.unpack_from("<I", head, 4)[0]
            continue
        if head[:4] != ZSTD_MAGIC:
            raise BundleError(path, f"not a zstd frame at byte {pos}")
        fhd = head[4]
        single = bool(fhd & 0x20)
        fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
        pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
        while True:
            f.seek(pos)
            bh = f.read(3)
            if len(bh) < 3:
                raise BundleError(path, "truncated: the zstd stream ends inside a frame")
            v = int.from_bytes(bh, "little")
            btype, bsize = (v >> 1) & 3, v >> 3
            if btype == 3:
                raise BundleError(path, f"corrupt zstd block at byte {pos}")
            pos += 3 + (1 if btype == 1 else bsize)
            if v & 1:
                break
        pos += 4 if fhd & 0x04 else 0
        if pos > size:
            raise BundleError(path, "truncated: the zstd stream ends inside a frame")
