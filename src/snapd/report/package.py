"""A module's package note: the FDO ``.note.package`` (https://systemd.io/ELF_PACKAGE_METADATA/).

An ELF note of owner "FDO", type 0xcafe1a7e, whose descriptor is a JSON object such as
``{"type":"deb","name":"redis-server","version":"5:7.0.15-1","architecture":"amd64",
"osCpe":"cpe:/o:debian:debian_linux:12"}``. It lives in an allocated note section, so in a
PT_NOTE segment near the file's start: it is read from the core's copy of the module's first
pages (the ELF header pages every core keeps), else from the module's file on disk.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

from snapd.report.model import clip

NT_FDO_PACKAGING_METADATA = 0xCAFE1A7E
FDO = b"FDO\0"
MAX_PHNUM = 256
MAX_NOTES_BYTES = 64 << 10
MAX_JSON = 4096
MAX_KEYS = 16
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD = 1
PT_NOTE = 4

#: read(address_or_offset, size) -> bytes (short or empty when not there)
Reader = Callable[[int, int], bytes]


def from_memory(read: Reader, start: int) -> dict[str, str] | None:
    """The package note of the module whose ELF header is mapped at ``start``."""
    phdrs = _phdrs(read, start)
    if phdrs is None:
        return None
    loads = [p for p in phdrs if p[0] == PT_LOAD]
    if not loads:
        return None
    bias = start - (min(p[3] for p in loads) & ~0xFFF)
    for p in phdrs:
        if p[0] == PT_NOTE:
            found = _scan(read(bias + p[3], min(p[5], MAX_NOTES_BYTES)))
            if found is not None:
                return found
    return None


def from_file(path: str) -> dict[str, str] | None:
    """The package note of an ELF file on disk (its PT_NOTE segments, by file offset)."""
    try:
        with open(path, "rb") as f:

            def read(off: int, size: int) -> bytes:
                f.seek(off)
                return f.read(size)

            phdrs = _phdrs(read, 0)
            for p in phdrs or []:
                if p[0] == PT_NOTE:
                    found = _scan(read(p[2], min(p[5], MAX_NOTES_BYTES)))
                    if found is not None:
                        return found
    except OSError:
        return None
    return None


def _phdrs(read: Reader, base: int) -> list[tuple[int, ...]] | None:
    head = read(base, _EHDR.size)
    if len(head) < _EHDR.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None  # only ELF64 little-endian (x86_64 cores)
    fields = _EHDR.unpack(head)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    if phentsize != _PHDR.size or not 0 < phnum <= MAX_PHNUM or phoff > 1 << 20:
        return None
    raw = read(base + phoff, phnum * _PHDR.size)
    return [_PHDR.unpack_from(raw, i * _PHDR.size) for i in range(len(raw) // _PHDR.size)]


def _scan(raw: bytes) -> dict[str, str] | None:
    off = 0
    while off + 12 <= len(raw):
        namesz, descsz, ntype = struct.unpack_from("<III", raw, off)
        name_off = off + 12
        desc_off = name_off + ((namesz + 3) & ~3)
        end = desc_off + ((descsz + 3) & ~3)
        if end > len(raw) or namesz > 256:
            return None
        if ntype == NT_FDO_PACKAGING_METADATA and raw[name_off : name_off + namesz] == FDO:
            return parse(raw[desc_off : desc_off + descsz])
        off = end
    return None


def parse(desc: bytes) -> dict[str, str] | None:
    """The note's JSON object, its scalar values as (clipped) strings; None if not JSON."""
    text = desc.rstrip(b"\0")[:MAX_JSON]
    try:
        obj = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    out = {}
    for k, v in list(obj.items())[:MAX_KEYS]:
        if isinstance(v, str | int | float | bool):
            out[clip(k)] = clip(v)
    return out
