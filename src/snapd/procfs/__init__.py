"""Reading /proc/PID: typed records and defensive parsers (see proc(5)).

The one place where ``OSError`` from /proc becomes a typed error: a vanished directory or ESRCH
is :class:`TargetGone`, EACCES/EPERM is :class:`NotPermitted`. :mod:`snapd.procfs.context`
captures the surroundings a debugger wants beside a core (limits, fds, cgroup, threads).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from snapd.errors import NotPermitted, TargetGone

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# include/linux/sched.h
PF_KTHREAD = 0x00200000

T = TypeVar("T")


def proc_call(pid: int, fn: Callable[[], T]) -> T:
    """Run a /proc access for ``pid``, converting OSError into the typed errors."""
    try:
        return fn()
    except (FileNotFoundError, ProcessLookupError) as err:
        raise TargetGone(pid) from err
    except PermissionError as err:
        raise NotPermitted(pid, "read /proc of") from err
    except OSError as err:
        if err.errno == errno.ESRCH:
            raise TargetGone(pid) from err
        raise


def read_bytes(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        chunks: list[bytes] = []
        while True:
            b = f.read(1 << 16)
            if not b:
                return b"".join(chunks)
            chunks.append(b)


class Stat(NamedTuple):
    """The fields of /proc/PID/stat that snapd uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    flags: int
    utime: int  # clock ticks
    stime: int
    cutime: int
    cstime: int
    nice: int
    num_threads: int
    starttime: int  # clock ticks since boot


def parse_stat(data: bytes) -> Stat:
    # comm may hold spaces and ')' itself: split at the last ')' (fs/proc/array.c do_task_stat).
    lpar = data.index(b"(")
    rpar = data.rindex(b")")
    comm = data[lpar + 1 : rpar].decode("utf-8", "replace")
    f = data[rpar + 2 :].split()
    return Stat(
        pid=int(data[:lpar]),
        comm=comm,
        state=f[0].decode(),
        ppid=int(f[1]),
        pgrp=int(f[2]),
        session=int(f[3]),
        flags=int(f[6]),
        utime=int(f[11]),
        stime=int(f[12]),
        cutime=int(f[13]),
        cstime=int(f[14]),
        nice=int(f[16]),
        num_threads=int(f[17]),
        starttime=int(f[19]),
    )


def stat(pid: int, tid: int | None = None) -> Stat:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    return proc_call(pid, lambda: parse_stat(read_bytes(path)))


def parse_status(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def status(pid: int, tid: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    return proc_call(pid, lambda: parse_status(read_bytes(path)))


def tids(pid: int) -> list[int]:
    return proc_call(pid, lambda: sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")))


def comm(pid: int) -> str:
    try:
        return read_bytes(f"/proc/{pid}/comm").rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return "?"


def auxv(pid: int) -> bytes:
    return proc_call(pid, lambda: read_bytes(f"/proc/{pid}/auxv"))


def cmdline(pid: int) -> bytes:
    return proc_call(pid, lambda: read_bytes(f"/proc/{pid}/cmdline"))


MAX_ARGV = 128 << 10  # bytes of a command line kept as argv (a catalog field, not a dump)


def argv(raw: bytes) -> list[str]:
    """/proc/PID/cmdline as a list of arguments (NUL-separated: fs/proc/base.c get_mm_cmdline),
    at most MAX_ARGV bytes of it; bytes that are not UTF-8 kept as backslash escapes."""
    raw = raw[:MAX_ARGV]
    return [a.decode("utf-8", "backslashreplace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []


def coredump_filter(pid: int) -> int:
    return proc_call(pid, lambda: int(read_bytes(f"/proc/{pid}/coredump_filter"), 16))


def exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@dataclass
class Mapping:
    """One VMA, as /proc/PID/smaps shows it (fs/proc/task_mmu.c show_map_vma, show_smap)."""

    start: int
    end: int
    perms: str  # "rwxp" / "r--s"
    offset: int
    dev: tuple[int, int]
    inode: int
    path: str  # as printed: "", "[heap]", "/usr/lib/x.so", "/SYSV00000000 (deleted)"
    rss: int = 0  # bytes
    anonymous: int = 0  # bytes of anonymous (incl. COW-ed) pages
    swap: int = 0  # bytes of anonymous pages swapped out
    vmflags: frozenset[str] = field(default_factory=frozenset)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def file_backed(self) -> bool:
        # Every VMA with a vm_file has an inode; anonymous ones print 0 (and maybe a [name]).
        return self.inode != 0 or (self.path.startswith("/") and not self.path.startswith("["))

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")


def _parse_map_line(line: str) -> Mapping:
    parts = line.split(None, 5)
    start_s, _, end_s = parts[0].partition("-")
    major, _, minor = parts[3].partition(":")
    return Mapping(
        start=int(start_s, 16),
        end=int(end_s, 16),
        perms=parts[1],
        offset=int(parts[2], 16),
        dev=(int(major, 16), int(minor, 16)),
        inode=int(parts[4]),
        path=parts[5] if len(parts) > 5 else "",
    )


def parse_maps(text: str) -> list[Mapping]:
    return [_parse_map_line(line) for line in text.splitlines() if line]


def parse_smaps(text: str) -> list[Mapping]:
    out: list[Mapping] = []
    cur: Mapping | None = None
    for line in text.splitlines():
        if not line:
            continue
        key, sep, rest = line.partition(":")
        # Header lines start with a hex range "7f..-7f.." and have no "Key:" form.
        if not sep or " " in key or "-" in key:
            cur = _parse_map_line(line)
            out.append(cur)
            continue
        if cur is None:
            continue
        if key == "Rss":
            cur.rss = int(rest.split()[0]) * 1024
        elif key == "Anonymous":
            cur.anonymous = int(rest.split()[0]) * 1024
        elif key == "Swap":
            cur.swap = int(rest.split()[0]) * 1024
        elif key == "VmFlags":
            cur.vmflags = frozenset(rest.split())
    return out


def smaps(pid: int) -> list[Mapping]:
    return proc_call(
        pid, lambda: parse_smaps(read_bytes(f"/proc/{pid}/smaps").decode("utf-8", "surrogateescape"))
    )


def maps(pid: int) -> list[Mapping]:
    return proc_call(
        pid, lambda: parse_maps(read_bytes(f"/proc/{pid}/maps").decode("utf-8", "surrogateescape"))
    )


def iter_pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)
