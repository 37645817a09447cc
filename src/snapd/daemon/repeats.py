"""Repeat cores (``action.core.repeat > 1``) waiting for their interval.

A repeat is reserved in the catalog only when it falls due: an entry's time and its /proc
context must be those of its own snapshot, not of the firing. Until then nothing is reserved,
so pause and shutdown can simply forget them. Core n+1 is scheduled when core n is reserved,
``interval`` after it: cores of a series are at least an interval apart however late the loop
reserved one of them (scheduled all from the firing, a late second core came less than an
interval before the third).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from snapd.daemon.request import CoreRequest


@dataclass(frozen=True)
class Repeat:
    due: float  # time.monotonic()
    n: int  # 2..repeat
    start: int  # the process's start time at the firing: a recycled pid is not dumped
    digest: str  # the rule file's content at the firing: an edited rule takes no more
    request: CoreRequest
    count: int  # the series' length (action.core.repeat)
    interval_ns: int

    def next(self, now: float) -> Repeat | None:
        """The core after this one, due an interval after ``now`` (when this one was reserved)."""
        if self.n >= self.count:
            return None
        return dataclasses.replace(self, due=now + self.interval_ns / 1e9, n=self.n + 1)


class Repeats:
    def __init__(self) -> None:
        self.scheduled: list[Repeat] = []

    def schedule(
        self, request: CoreRequest, *, start: int, digest: str, count: int, interval_ns: int, now: float
    ) -> None:
        """Core 2 of a series whose first core was reserved at ``now``; each later one is
        scheduled by :meth:`add` when its predecessor is reserved."""
        if count > 1:
            again = request.repeated()
            self.add(Repeat(now + interval_ns / 1e9, 2, start, digest, again, count, interval_ns))

    def add(self, rep: Repeat | None) -> None:
        if rep is not None:
            self.scheduled.append(rep)

    def take_due(self, now: float) -> list[Repeat]:
        due = [r for r in self.scheduled if r.due <= now]
        if due:
            self.scheduled = [r for r in self.scheduled if r.due > now]
        return due

    def clear(self) -> None:
        self.scheduled.clear()
