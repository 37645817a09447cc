"""How work that runs beside the dumps plugs into the daemon's loop, whatever drives the loop.

A :class:`LoopClient` (the reports, the ctl diffs) watches its own fds through the loop's
:class:`FdWatch` (a callback when one is readable), is ticked once per turn of the loop, and
says when it must be ticked next at the latest (a deadline to enforce), so a loop that sleeps
until something happens wakes in time. Everything runs in the loop's thread and never blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class FdWatch(Protocol):
    def watch_fd(self, fd: int, ready: Callable[[], None]) -> None:
        """Call ``ready()`` from the loop whenever ``fd`` is readable, until unwatched."""

    def unwatch_fd(self, fd: int) -> None:
        """Stop watching ``fd`` (idempotent); before the fd is closed."""


class LoopClient(Protocol):
    def tick(self, now: float) -> None:
        """One turn of the loop (``now`` is time.monotonic()): start, poll, expire."""

    def next_tick(self) -> float | None:
        """The time.monotonic() by which :meth:`tick` must run again, or None (idle)."""

    def close(self) -> None:
        """The daemon stops: kill what runs, leave what is queued for the next start."""
