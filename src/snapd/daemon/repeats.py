"""Repeat cores (``action.core.repeat > 1``) waiting for their interval.

A repeat is reserved in the catalog only when it falls due: an entry's time and its /proc
context must be those of its own snapshot, not of the firing. Until then nothing is reserved,
so pause and shutdown can simply forget them.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapd.daemon.request import CoreRequest


@dataclass(frozen=True)
class Repeat:
    due: float  # time.monotonic()
    n: int  # 2..repeat
    start: int  # the process's start time at the firing: a recycled pid is not dumped
    digest: str  # the rule file's content at the firing: an edited rule takes no more
    request: CoreRequest


class Repeats:
    def __init__(self) -> None:
        self.scheduled: list[Repeat] = []

    def schedule(
        self, request: CoreRequest, *, start: int, digest: str, count: int, interval_ns: int, now: float
    ) -> None:
        """Cores 2..count of a firing at ``now``, ``interval_ns`` apart."""
        again = request.repeated()
        for n in range(1, count):
            self.scheduled.append(Repeat(now + n * interval_ns / 1e9, n + 1, start, digest, again))

    def take_due(self, now: float) -> list[Repeat]:
        due = [r for r in self.scheduled if r.due <= now]
        if due:
            self.scheduled = [r for r in self.scheduled if r.due > now]
        return due

    def next_due(self) -> float | None:
        return min((r.due for r in self.scheduled), default=None)

    def clear(self) -> None:
        self.scheduled.clear()
