"""The running kernel's syscalls: names, numbers, tracepoints and argument types.

Three sources, each for what it knows best:

- tracefs (``events/syscalls/sys_enter_NAME``, kernel/trace/trace_syscalls.c) says which calls
  this kernel can trace, and each one's ``format`` gives its arguments' names and C types;
- the kernel's own syscall table (:mod:`snapd.rules.syscall_table`, x86_64) gives the numbers
  the BPF program keys on, and maps the names users know (``sendfile``, ``stat``, ``uname``,
  ``umount2``) to the kernel's entry points, which name the tracepoints (``sendfile64``,
  ``newstat``, ``newuname``, ``umount``);
- the C library's ``asm/unistd*.h`` headers, only for what the table does not cover (another
  architecture, a call newer than the table).

A rule may name a call either way; it is kept under the user's name.
"""

from __future__ import annotations

import functools
import glob
import os
import platform
import re
from dataclasses import dataclass
from enum import IntEnum

from snapd.rules import syscall_table

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_NR_HEADERS = (
    "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "/usr/include/asm/unistd_64.h",
    "/usr/include/aarch64-linux-gnu/asm/unistd.h",
    "/usr/include/asm-generic/unistd.h",
)
HEADERS_SOURCE = "the C library's asm/unistd headers"
NAME_RE = re.compile(r"[a-z0-9_]{1,64}")


@dataclass(frozen=True)
class Syscall:
    """One call: ``name`` as users know it, ``tracepoint`` its syscalls:sys_enter_* name, its
    number (None when no source knows it) and where that number came from."""

    name: str
    tracepoint: str
    nr: int | None
    source: str


class ArgKind(IntEnum):
    """How the kernel reads an argument register: the tracepoint records all six registers as
    64-bit values, but ``int dfd`` is a 32-bit signed value (AT_FDCWD is -100, whatever the
    upper half of the register holds), ``unsigned int fd`` a 32-bit unsigned one, ``umode_t`` 16
    bits (include/linux/syscalls.h SYSCALL_DEFINE casts each to its declared type)."""

    S64 = 0  # pointers, long, size_t, loff_t: the register as it is
    S32 = 1
    U32 = 2
    U16 = 3

    @property
    def bits(self) -> int:
        return {ArgKind.S64: 64, ArgKind.S32: 32, ArgKind.U32: 32, ArgKind.U16: 16}[self]

    @property
    def signed(self) -> bool:
        return self in (ArgKind.S64, ArgKind.S32)

    def range(self) -> tuple[int, int]:
        b = self.bits
        return (-(1 << (b - 1)), (1 << (b - 1)) - 1) if self.signed else (0, (1 << b) - 1)


@dataclass(frozen=True)
class Arg:
    name: str
    ctype: str
    kind: ArgKind


_S32 = {"int", "pid_t", "clockid_t", "timer_t", "mqd_t", "key_t", "rwf_t", "key_serial_t", "__s32", "s32"}
_U32 = {"unsigned int", "unsigned", "u32", "__u32", "uid_t", "gid_t", "qid_t", "old_uid_t", "old_gid_t"}
_U16 = {"umode_t", "unsigned short", "u16", "__u16"}


def arg_kind(ctype: str) -> ArgKind:
    """The width and signedness of a C type as the tracepoint format prints it."""
    if "*" in ctype:
        return ArgKind.S64
    words = [w for w in ctype.split() if w not in ("const", "volatile")]
    base = " ".join(words)
    if base in _S32:
        return ArgKind.S32
    if base in _U32 or (words and words[0] == "enum"):  # enums of syscall ABIs are unsigned int
        return ArgKind.U32
    if base in _U16:
        return ArgKind.U16
    return ArgKind.S64


@functools.lru_cache(maxsize=1)
def events_dir() -> str | None:
    """The readable tracefs syscalls directory, or None (e.g. unprivileged: tracefs is 0700)."""
    for root in TRACEFS:
        d = os.path.join(root, "events", "syscalls")
        try:
            if any(n.startswith("sys_enter_") for n in os.listdir(d)):
                return d
        except OSError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def traced_names() -> frozenset[str] | None:
    """Tracepoint names of the syscalls this kernel can trace, or None when tracefs cannot be
    read."""
    d = events_dir()
    if d is None:
        return None
    return frozenset(n[len("sys_enter_") :] for n in os.listdir(d) if n.startswith("sys_enter_"))


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, tuple[int, str]], dict[str, str]]:
    """(user name -> (number, tracepoint), tracepoint -> user name) from the kernel's table,
    for the architecture it describes only."""
    by_name: dict[str, tuple[int, str]] = {}
    by_tp: dict[str, str] = {}
    if platform.machine() != "x86_64":
        return by_name, by_tp
    for line in syscall_table.TABLE.splitlines():
        nr, name, *tp = line.split()
        tracepoint = tp[0] if tp else name
        by_name[name] = (int(nr), tracepoint)
        by_tp[tracepoint] = name
    return by_name, by_tp


@functools.lru_cache(maxsize=1)
def header_numbers() -> dict[str, int]:
    """name -> number from the installed uapi headers (the fallback source)."""
    out: dict[str, int] = {}
    for path in _NR_HEADERS + tuple(glob.glob("/usr/include/*/asm/unistd_64.h")):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for name, nr in re.findall(r"#define\s+__NR_(\w+)\s+(\d+)\b", text):
            out.setdefault(name, int(nr))
        if out:
            break
    return out


@functools.lru_cache(maxsize=1024)
def lookup(name: str) -> Syscall:
    """Resolve a user name (``sendfile``) or a tracepoint name (``sendfile64``)."""
    by_name, by_tp = _table()
    if name in by_name:
        nr, tp = by_name[name]
        return Syscall(name, tp, nr, syscall_table.SOURCE)
    if name in by_tp:
        user = by_tp[name]
        return Syscall(user, name, by_name[user][0], syscall_table.SOURCE)
    number = header_numbers().get(name)
    return Syscall(name, name, number, HEADERS_SOURCE if number is not None else "")


def unknown_number(name: str) -> str:
    """Why ``name`` has no number: the sources asked, for an error message."""
    sources = [HEADERS_SOURCE]
    if _table()[0]:
        sources.insert(0, syscall_table.SOURCE)
    return f"no syscall number known for '{name}' in {' nor in '.join(sources)}"


def known_names() -> frozenset[str] | None:
    """Every name a rule may use on this kernel (user and tracepoint names of traced calls), or,
    when tracefs cannot be read (unprivileged), every name the table and headers know; None when
    nothing is known."""
    by_name, by_tp = _table()
    traced = traced_names()
    if traced is None:
        names = set(by_name) | set(by_tp) | set(header_numbers())
        return frozenset(names) or None
    return frozenset(traced | {by_tp[t] for t in traced if t in by_tp})


def is_traced(name: str) -> bool | None:
    """Whether this kernel has a tracepoint for ``name`` (None: tracefs cannot tell)."""
    traced = traced_names()
    return None if traced is None else lookup(name).tracepoint in traced


@functools.lru_cache(maxsize=1024)
def args(name: str) -> tuple[Arg, ...] | None:
    """The arguments of ``name`` from its sys_enter format (None when unknown)."""
    d = events_dir()
    if d is None:
        return None
    try:
        with open(os.path.join(d, f"sys_enter_{lookup(name).tracepoint}", "format")) as f:
            text = f.read()
    except OSError:
        return None
    out = []
    # "field:int dfd;\toffset:16;" -- the syscall arguments follow the 16-byte header
    for ctype, fname, off in re.findall(r"field:([^;]*?)\s*\b(\w+);\s*offset:(\d+);", text):
        if int(off) >= 16:
            out.append(Arg(fname, ctype.strip(), arg_kind(ctype)))
    return tuple(out)


def arity(name: str) -> int | None:
    """Number of arguments from the sys_enter format (None when unknown)."""
    a = args(name)
    return None if a is None else len(a)


def numbers() -> dict[str, int]:
    """user name -> number, every call the table or the headers know."""
    out = dict(header_numbers())
    out.update({n: nr for n, (nr, _) in _table()[0].items()})
    return out


def names_by_number() -> dict[int, str]:
    by_name = _table()[0]
    out = {nr: name for name, nr in header_numbers().items()}
    out.update({nr: name for name, (nr, _) in by_name.items()})
    return out
