"""Offsets of kernel struct members, read from the running kernel's BTF (/sys/kernel/btf/vmlinux).

bcc compiles the probe program against the headers in /lib/modules/$(uname -r)/build, which on
a kernel without its own headers package are another kernel's (setup.sh links the distro's
newest): `struct task_struct` then has that kernel's layout, and `task->group_leader` reads
garbage. Members the program must read are therefore located here, in the running kernel's
own type information, and passed to the program as constants (snapd.probe.layout.cflags).

The format is include/uapi/linux/btf.h (Documentation/bpf/btf.rst): a header, then
``struct btf_type`` records (each followed by kind-specific data), then the string section.
Members of anonymous structs and unions (randomized layout groups, ``union { ... }``) are found
by descending into them, their offsets added.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F

# BTF_KIND_* (include/uapi/linux/btf.h) and the bytes of data after each struct btf_type
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_FIXED = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_MEMBER = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)

_HDR = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")


class BtfError(Exception):
    """The kernel's BTF is missing or does not describe what was asked (the caller falls back
    to the compile-time headers, and says so)."""


@dataclass(frozen=True)
class _Types:
    data: bytes
    strings: int  # offset of the string section in data
    starts: tuple[int, ...]  # offset of each type record, by type id (0 is void)
    by_name: dict[str, int]  # struct/union name -> type id (the first of that name)

    def name(self, off: int) -> str:
        s = self.strings + off
        return self.data[s : self.data.index(b"\0", s)].decode()

    def record(self, tid: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, offset of its member data)."""
        at = self.starts[tid]
        _name, info, size_type = _TYPE.unpack_from(self.data, at)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_type, at + _TYPE.size


@functools.cache
def _load(path: str = VMLINUX) -> _Types:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise BtfError(f"{path}: {err.strerror}") from err
    if len(data) < _HDR.size:
        raise BtfError(f"{path}: too short for BTF")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = _HDR.unpack_from(data)
    if magic != MAGIC:
        raise BtfError(f"{path}: not BTF (magic {magic:#x})")
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    starts = [0]
    by_name: dict[str, int] = {}
    strings = hdr_len + str_off
    names: list[tuple[int, int]] = []
    while pos < end:
        name_off, info, _ = _TYPE.unpack_from(data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        starts.append(pos)
        if kind in (STRUCT, UNION) and name_off:
            names.append((name_off, len(starts) - 1))
        pos += _TYPE.size + _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
    types = _Types(data, strings, tuple(starts), by_name)
    for name_off, tid in names:
        by_name.setdefault(types.name(name_off), tid)
    return types


def _strip(types: _Types, tid: int) -> int:
    """Follow typedef/const/volatile/restrict/type_tag to the type they qualify."""
    for _ in range(64):
        kind, _vlen, _kf, size_type, _at = types.record(tid)
        if kind not in _MODIFIERS:
            return tid
        tid = size_type
    raise BtfError(f"type {tid}: a qualifier chain that does not end")


def _find(types: _Types, tid: int, member: str, depth: int = 0) -> int | None:
    """Bit offset of ``member`` in struct/union ``tid``, looking into anonymous members."""
    kind, vlen, kind_flag, _size, at = types.record(tid)
    if kind not in (STRUCT, UNION) or depth > 8:
        return None
    for i in range(vlen):
        name_off, mtype, offset = _MEMBER.unpack_from(types.data, at + i * _MEMBER.size)
        bits = int(offset & 0xFFFFFF if kind_flag else offset)  # kind_flag: bitfield size in the top byte
        if name_off and types.name(name_off) == member:
            return bits
        if not name_off:
            inner = _find(types, _strip(types, mtype), member, depth + 1)
            if inner is not None:
                return bits + inner
    return None


def member_offset(struct_name: str, member: str, path: str = VMLINUX) -> int:
    """Byte offset of ``struct_name.member`` in the running kernel."""
    types = _load(path)
    tid = types.by_name.get(struct_name)
    if tid is None:
        raise BtfError(f"{path}: no struct {struct_name}")
    bits = _find(types, tid, member)
    if bits is None:
        raise BtfError(f"{path}: struct {struct_name} has no member {member}")
    if bits % 8:
        raise BtfError(f"{path}: {struct_name}.{member} is a bitfield")
    return bits // 8
