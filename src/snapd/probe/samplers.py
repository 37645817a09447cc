"""/proc samplers for the rss, threads and fds triggers (no BPF: these are cheap to read).

Each loaded rule of those kinds reads, every ``interval`` seconds, for each process the kernel
currently targets for it: VmRSS and Threads from /proc/PID/status, and the entries of
/proc/PID/fd. A rule fires when a process is seen above its threshold while armed; it re-arms
when the value drops to or below the threshold (so a process already above it fires once, at
the first sample).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from snapd import procfs
from snapd.errors import SnapdError
from snapd.probe.event import Event
from snapd.rules.model import FdsTrigger, RssTrigger, Rule, ThreadsTrigger, Trigger, trigger_kind


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


def is_sampled(trigger: Trigger) -> bool:
    return isinstance(trigger, (RssTrigger, ThreadsTrigger, FdsTrigger))


def crossings(
    rule: Rule, crossing: Crossing, pids: Iterable[int], now_ns: int, *, first: bool
) -> list[Event]:
    """Sample ``pids`` for ``rule``: a firing for each that went above its threshold.
    ``first``: the rule's first sample, whose firings happen at load (``Event.at_load``)."""
    trig = rule.trigger
    assert isinstance(trig, (RssTrigger, ThreadsTrigger, FdsTrigger))
    above = threshold(trig)
    out = []
    live = set()
    for pid in pids:
        live.add(pid)
        value = measure(trig, pid)
        if value is not None and crossing.update(pid, value, above):
            out.append(
                Event(
                    rule=rule.name,
                    pid=pid,
                    tid=pid,
                    comm=procfs.comm(pid),
                    kind=trigger_kind(trig),
                    time_ns=now_ns,
                    value=value,
                    at_load=first,
                )
            )
    crossing.forget_except(live)
    return out
