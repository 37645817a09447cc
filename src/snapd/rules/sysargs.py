"""Named syscall arguments and the strings a `when` can match, from the tracepoint formats.

``events/syscalls/sys_enter_NAME/format`` (kernel/trace/trace_syscalls.c) lists each argument's
C type and name after the common fields and ``__syscall_nr``, at offsets 16, 24, ...: argument
N is at offset 16 + 8 N. Those names (``fd``, ``count``, ``filename``, ``flags``) become aliases
of ``argN`` in `when`, and decide which string a rule may match:

- ``path``: the syscall's one path argument (a ``const char *`` named filename, pathname or
  path); a syscall with two (rename: oldname, newname) must name the one it means.
- any ``const char *`` argument by its name (``oldname ~ "/tmp/*"``).
- ``data``: the bytes a write-like syscall hands the kernel: write and pwrite64 (buf, count),
  sendto (buff, len), writev, pwritev, pwritev2 (the first iovec), sendmsg (the first iovec of
  the message). At most :data:`snapd.rules.patterns.STR_BYTES` bytes are read.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from snapd.rules import syscalls as _sys

PATH_NAMES = ("filename", "pathname", "path")
_FIELD = re.compile(r"field:(?P<decl>[^;]*?)\s*(?P<name>\w+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);")


class Source(IntEnum):
    """How the kernel reads a string argument (``struct str_src.kind`` in strings.bpf.c)."""

    CSTR = 1  # a NUL-terminated string at argument ``ptr``
    BUF = 2  # ``len`` bytes (argument ``len``) at argument ``ptr``
    IOV = 3  # the first struct iovec of the array at argument ``ptr``
    MSG = 4  # the first iovec of the struct user_msghdr at argument ``ptr``


@dataclass(frozen=True)
class SysArg:
    name: str
    ctype: str
    index: int  # argN


@dataclass(frozen=True)
class StringArg:
    """Where the bytes of a string name are, for one syscall."""

    source: Source
    ptr: int  # argument index of the pointer
    length: int = 0  # Source.BUF: argument index of the byte count


# The bytes written, by syscall; the argument names are checked against the format at load.
_DATA = {
    "write": (Source.BUF, "buf", "count"),
    "pwrite64": (Source.BUF, "buf", "count"),
    "sendto": (Source.BUF, "buff", "len"),
    "writev": (Source.IOV, "vec", None),
    "pwritev": (Source.IOV, "vec", None),
    "pwritev2": (Source.IOV, "vec", None),
    "sendmsg": (Source.MSG, "msg", None),
}


def parse_format(text: str) -> tuple[SysArg, ...]:
    """The arguments of one sys_enter format (fields at offset 16 and beyond)."""
    out = []
    for m in _FIELD.finditer(text):
        off = int(m.group("off"))
        if off < 16 or (off - 16) % 8:
            continue
        out.append(SysArg(m.group("name"), " ".join(m.group("decl").split()), (off - 16) // 8))
    return tuple(out)


@functools.lru_cache(maxsize=512)
def args_of(syscall: str) -> tuple[SysArg, ...] | None:
    """The named arguments of ``syscall`` on this kernel (None: tracefs unreadable or no such
    tracepoint)."""
    d = _sys.events_dir()
    if d is None or not _sys.NAME_RE.fullmatch(syscall):
        return None
    try:
        with open(os.path.join(d, f"sys_enter_{syscall}", "format")) as f:
            return parse_format(f.read(1 << 16))
    except OSError:
        return None


def _is_cstr(a: SysArg) -> bool:
    return a.ctype in ("const char *", "char *")


def alias(syscall: str, name: str) -> int | None:
    """The N of ``argN`` that ``name`` names for ``syscall`` (None: not one of its arguments)."""
    for a in args_of(syscall) or ():
        if a.name == name:
            return a.index
    return None


def string_arg(syscall: str, name: str) -> StringArg | str:
    """Where string ``name`` (``path``, ``data`` or an argument's name) is for ``syscall``;
    a message saying why not when it has none."""
    args = args_of(syscall)
    if args is None:
        return f"the arguments of '{syscall}' are unknown (no readable tracepoint format)"
    by_name = {a.name: a for a in args}
    if name == "data":
        spec = _DATA.get(syscall)
        if spec is None:
            return f"'{syscall}' writes no data snapd reads (data: " + ", ".join(sorted(_DATA)) + ")"
        kind, ptr, length = spec
        if ptr not in by_name or (length is not None and length not in by_name):
            return f"the format of '{syscall}' does not have the arguments snapd expects"
        return StringArg(kind, by_name[ptr].index, by_name[length].index if length else 0)
    if name == "path":
        paths = [a for a in args if a.name in PATH_NAMES and _is_cstr(a)]
        if len(paths) == 1:
            return StringArg(Source.CSTR, paths[0].index)
        cands = [a.name for a in args if _is_cstr(a)]
        if not cands:
            return f"'{syscall}' takes no path"
        return f"'{syscall}' takes several strings; name one: " + ", ".join(cands)
    a = by_name.get(name)
    if a is None:
        return f"'{syscall}' has no argument '{name}'"
    if not _is_cstr(a):
        return f"argument '{name}' of '{syscall}' is a {a.ctype}, not a string"
    return StringArg(Source.CSTR, a.index)


def aliases_for(syscalls: tuple[str, ...] | list[str]) -> Callable[[str], int | str | None]:
    """The `when` aliases of a rule on ``syscalls``: an argument's name -> its N, the same in
    every one of them (else a message naming the one that differs); None: no such name."""

    def resolve(name: str) -> int | str | None:
        found: dict[str, int | None] = {s: alias(s, name) for s in syscalls}
        known = {s: n for s, n in found.items() if n is not None}
        if not known:
            return None
        missing = [s for s, n in found.items() if n is None]
        if missing:
            return (
                f"'{missing[0]}' has no argument '{name}' (it is arg{next(iter(known.values()))} of others)"
            )
        if len(set(known.values())) > 1:
            first, *rest = known.items()
            other = next((s, n) for s, n in rest if n != first[1])
            return f"'{name}' is arg{first[1]} of '{first[0]}' but arg{other[1]} of '{other[0]}': use argN"
        return next(iter(known.values()))

    return resolve


def string_problem(syscalls: tuple[str, ...] | list[str], name: str) -> str | None:
    """Why string ``name`` cannot be read for one of ``syscalls``, or None."""
    for s in syscalls:
        where = string_arg(s, name)
        if isinstance(where, str):
            return where
    return None
