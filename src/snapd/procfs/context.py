"""The /proc/PID context a debugger wants later, captured while the target is alive.

A core holds memory and registers; what it lacks is the process's surroundings: its limits
(was RLIMIT_NOFILE hit?), its open files and sockets, its cgroup, the kernel's view of its
threads. These are read here, best effort, and the daemon stores them as JSON in the catalog
entry (:meth:`snapd.store.Catalog.reserve`).

``environ`` is deliberately *not* read: environments hold secrets, and the catalog is readable
by the ``snapd`` group. Every list is bounded so that a process with a million fds or mappings
cannot bloat the catalog (the ``*_total`` fields give the real counts).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from typing import Any

from snapd import procfs
from snapd.errors import TargetError

MAX_FDS = 4096
MAX_MAPS = 65536
MAX_MAPS_BYTES = 8 << 20
MAX_THREADS = 4096
MAX_KSTACK_THREADS = 256

_LIMIT = re.compile(r"^(.*?)\s{2,}(\S+)\s+(\S+)\s*(\S*)\s*$")
_UNIT_SUFFIXES = (".service", ".scope")


def _s(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def parse_limits(text: str) -> list[dict[str, str]]:
    """/proc/PID/limits (fs/proc/base.c proc_pid_limits) -> [{name, soft, hard, units}]."""
    out = []
    for line in text.splitlines()[1:]:
        m = _LIMIT.match(line)
        if m:
            out.append(
                {
                    "name": m.group(1).strip(),
                    "soft": m.group(2),
                    "hard": m.group(3),
                    "units": m.group(4),
                }
            )
    return out


def unit_of(cgroup: str) -> str:
    """The systemd unit from a cgroup path: the deepest ``*.service`` or ``*.scope`` component."""
    for part in reversed(cgroup.split("/")):
        if part.endswith(_UNIT_SUFFIXES):
            return part
    return ""


def cgroup_path(cgroup_lines: list[str]) -> str:
    """The unified (v2) hierarchy's path, else the first v1 one."""
    for line in cgroup_lines:
        if line.startswith("0::"):
            return line[3:]
    for line in cgroup_lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2]:
            return parts[2]
    return ""


def capture(pid: int) -> dict[str, Any]:
    """Capture the context of ``pid``. Raises :class:`~snapd.errors.TargetGone` (or
    :class:`~snapd.errors.NotPermitted`) only if the process cannot be read at all; a section
    that fails later (the process exiting half-way) is recorded under ``errors``."""
    base = f"/proc/{pid}"
    st = procfs.status(pid)  # raises TargetGone / NotPermitted
    ctx: dict[str, Any] = {"pid": pid, "captured_at": time.time(), "status": st, "errors": {}}
    errors: dict[str, str] = ctx["errors"]

    def section(name: str, fn: Callable[[], Any]) -> None:
        try:
            ctx[name] = fn()
        except (OSError, ValueError, TargetError) as err:
            errors[name] = str(err)

    ctx["comm"] = procfs.comm(pid)
    ctx["exe"] = _s(os.fsencode(procfs.exe(pid)))
    uid_field = st.get("Uid", "").split()
    ctx["uid"] = int(uid_field[0]) if uid_field else -1

    section("cmdline", lambda: procfs.argv(procfs.cmdline(pid)))
    section("cgroups", lambda: _s(procfs.read_bytes(f"{base}/cgroup")).splitlines())
    ctx["cgroup"] = cgroup_path(ctx.get("cgroups", []))
    ctx["unit"] = unit_of(ctx["cgroup"])
    section("limits", lambda: parse_limits(_s(procfs.read_bytes(f"{base}/limits"))))
    section("cwd", lambda: _s(os.readlink(f"{base}/cwd").encode("utf-8", "surrogateescape")))
    section("root", lambda: _s(os.readlink(f"{base}/root").encode("utf-8", "surrogateescape")))
    section("fds", lambda: _fds(base, ctx))
    section("maps", lambda: _maps(base, ctx))
    section("threads", lambda: _threads(pid, base, ctx))
    return ctx


def _fds(base: str, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    names = sorted(int(n) for n in os.listdir(f"{base}/fd") if n.isdigit())
    ctx["fds_total"] = len(names)
    out: list[dict[str, Any]] = []
    for fd in names[:MAX_FDS]:
        item: dict[str, Any] = {"fd": fd}
        try:
            item["target"] = _s(os.readlink(f"{base}/fd/{fd}").encode("utf-8", "surrogateescape"))
        except OSError:
            continue  # closed meanwhile
        try:
            info = procfs.parse_status(procfs.read_bytes(f"{base}/fdinfo/{fd}"))
            item["pos"] = int(info.get("pos", "0"))
            item["flags"] = info.get("flags", "")
        except (OSError, ValueError):
            pass
        out.append(item)
    return out


def _maps(base: str, ctx: dict[str, Any]) -> list[str]:
    lines = _s(procfs.read_bytes(f"{base}/maps")).splitlines()
    ctx["maps_total"] = len(lines)
    out: list[str] = []
    size = 0
    for line in lines[:MAX_MAPS]:
        size += len(line) + 1
        if size > MAX_MAPS_BYTES:
            break
        out.append(line)
    return out


def _threads(pid: int, base: str, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    tids = procfs.tids(pid)
    ctx["threads_total"] = len(tids)
    out: list[dict[str, Any]] = []
    for i, tid in enumerate(tids[:MAX_THREADS]):
        try:
            s = procfs.stat(pid, tid)
        except TargetError:
            continue
        t: dict[str, Any] = {"tid": tid, "comm": s.comm, "state": s.state}
        with contextlib.suppress(OSError):
            t["wchan"] = _s(procfs.read_bytes(f"{base}/task/{tid}/wchan"))
        if i < MAX_KSTACK_THREADS:
            # Kernel stacks (root only): what a thread stuck in D state is waiting for.
            with contextlib.suppress(OSError):
                t["kernel_stack"] = _s(procfs.read_bytes(f"{base}/task/{tid}/stack")).splitlines()
        out.append(t)
    return out
