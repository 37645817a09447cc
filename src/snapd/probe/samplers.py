"""/proc samplers for the rss, threads and fds triggers (no BPF: these are cheap to read).

Each loaded rule of those kinds reads, every ``interval`` seconds, for each process the kernel
currently targets for it: VmRSS and Threads from /proc/PID/status, and the entries of
/proc/PID/fd. A rule fires when a process is seen above its threshold while armed; it re-arms
when the value drops to or below the threshold (so a process already above it fires once, at
the first sample).
"""

from __future__ import annotations

import os

from snapd import procfs
from snapd.errors import SnapdError
from snapd.rules.model import FdsTrigger, RssTrigger, ThreadsTrigger


def measure(trigger: RssTrigger | ThreadsTrigger | FdsTrigger, pid: int) -> int | None:
    try:
        if isinstance(trigger, FdsTrigger):
            return len(os.listdir(f"/proc/{pid}/fd"))
        st = procfs.status(pid)
        if isinstance(trigger, RssTrigger):
            return int(st["VmRSS"].split()[0]) * 1024
        return int(st["Threads"])
    except (SnapdError, OSError, KeyError, ValueError, IndexError):
        return None


def threshold(trigger: RssTrigger | ThreadsTrigger | FdsTrigger) -> int:
    return trigger.above_bytes if isinstance(trigger, RssTrigger) else trigger.above


class Crossing:
    """Edge detection per process: fire once on going above, re-arm on coming back down."""

    def __init__(self) -> None:
        self.fired: set[int] = set()

    def update(self, pid: int, value: int, above: int) -> bool:
        if value > above:
            if pid not in self.fired:
                self.fired.add(pid)
                return True
            return False
        self.fired.discard(pid)
        return False

    def forget_except(self, live: set[int]) -> None:
        self.fired &= live
