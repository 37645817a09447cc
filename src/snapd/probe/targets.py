"""Target selectors in user space: what the kernel needs to match them, and /proc scans.

The exec probe in probe.bpf.c classifies every new process in the kernel (comm glob, exe hash,
uid, cgroup ancestor, pid). This module prepares those values and classifies processes that
already exist when a rule loads, by reading /proc (proc(5)); the same scan runs periodically as a
safety net for what the exec probe cannot see (a comm changed with prctl(PR_SET_NAME), an exe run
through a path that is neither the configured one nor its resolved form).
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from dataclasses import dataclass

from snapd import procfs
from snapd.errors import SnapdError
from snapd.rules.model import Target

NO_CGROUP = (1 << 64) - 1  # never a cgroup id: a selector whose cgroup does not exist (yet)


def fnv1a(data: bytes) -> int:
    """FNV-1a, 64 bit: the exec probe hashes the exec filename the same way."""
    h = 14695981039346656037
    for b in data:
        h ^= b
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True)
class Glob:
    """A comm pattern compiled for the kernel's shift-and matcher (probe.bpf.c glob_match)."""

    length: int  # accept state
    star: int  # bit p: pattern[p] == '*'
    chars: tuple[int, ...]  # 256 masks: bit p when pattern[p] is that byte or '?'


def compile_glob(pattern: str) -> Glob:
    pat = re.sub(rb"\*+", b"*", pattern.encode())
    chars = [0] * 256
    star = 0
    for p, c in enumerate(pat):
        if c == ord("*"):
            star |= 1 << p
        elif c == ord("?"):
            for b in range(1, 256):
                chars[b] |= 1 << p
        else:
            chars[c] |= 1 << p
    return Glob(len(pat), star, tuple(chars))


def exe_hashes(exe: str) -> tuple[int, int]:
    """Hashes of the path as written and as resolved (e.g. /sbin -> /usr/sbin on usrmerge)."""
    return fnv1a(exe.encode()), fnv1a(os.path.realpath(exe).encode())


@functools.lru_cache(maxsize=1)
def cgroup2_root() -> str:
    """Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    hybrid (v1 + v2) system. bpf_get_current_ancestor_cgroup_id works on this hierarchy."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                # mountinfo(5): ... mount-point ... - fstype source options
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return "/sys/fs/cgroup"


def find_unit_cgroup(unit: str) -> str | None:
    """The cgroup path (relative to the cgroup2 root) of a systemd unit, if it is running."""
    root = cgroup2_root()
    for guess in (f"system.slice/{unit}", unit):
        if os.path.isdir(os.path.join(root, guess)):
            return "/" + guess
    for dirpath, dirnames, _ in os.walk(root):
        depth = dirpath[len(root) :].count("/")
        if unit in dirnames:
            return os.path.join(dirpath, unit)[len(root) :]
        if depth >= 4:
            dirnames[:] = []
    return None


def cgroup_id(path: str | None) -> tuple[int, int]:
    """(ancestor level, cgroup id) for bpf_get_current_ancestor_cgroup_id; the id of a cgroup2
    directory is its inode number (kernel/cgroup/cgroup.c cgroup_id is the kernfs node id)."""
    if not path:
        return 0, NO_CGROUP
    rel = path.strip("/")
    level = len([p for p in rel.split("/") if p])
    try:
        return level, os.stat(os.path.join(cgroup2_root(), rel)).st_ino
    except OSError:
        return level, NO_CGROUP


def target_cgroup(target: Target) -> str | None:
    if target.cgroup is not None:
        return target.cgroup
    if target.unit is not None:
        return find_unit_cgroup(target.unit)
    return None


def _proc_cgroup(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


def matches(pid: int, target: Target, cgroup: str | None) -> bool:
    """Whether existing process ``pid`` matches every selector of ``target`` (from /proc)."""
    try:
        if target.pid is not None and pid != target.pid:
            return False
        if target.comm is not None and not fnmatch.fnmatchcase(procfs.comm(pid), target.comm):
            return False
        if target.exe is not None:
            exe = procfs.exe(pid)
            if exe not in (target.exe, os.path.realpath(target.exe)):
                return False
        if target.uid is not None:
            uid = int(procfs.status(pid)["Uid"].split()[0])
            if uid != target.uid:
                return False
        if target.unit is not None or target.cgroup is not None:
            cg = _proc_cgroup(pid)
            if cgroup is None or cg is None or not (cg == cgroup or cg.startswith(cgroup.rstrip("/") + "/")):
                return False
        # Kernel threads have no user memory and no syscalls to trace for a rule.
        return procfs.stat(pid).flags & procfs.PF_KTHREAD == 0
    except (SnapdError, KeyError, ValueError, OSError):
        return False


def scan(target: Target, cgroup: str | None) -> list[int]:
    """Existing processes matching ``target``."""
    if target.pid is not None:
        return [target.pid] if matches(target.pid, target, cgroup) else []
    me = os.getpid()
    return [pid for pid in procfs.iter_pids() if pid != me and matches(pid, target, cgroup)]


def describe(pid: int) -> dict[str, object]:
    """What ``snapd check --matches`` and ``ctl rules --matches`` show of a selected process."""
    from snapd.procfs.context import unit_of

    cg = _proc_cgroup(pid) or ""
    return {"pid": pid, "comm": procfs.comm(pid), "exe": procfs.exe(pid), "unit": unit_of(cg) if cg else ""}
