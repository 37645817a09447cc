"""What the daemon's loop runs besides probes, dumps and ctl: parts registered with it.

A part does its slow work elsewhere (a bounded child process, a thread of its own) and is
called from the loop's thread only to hand over results. Each turn of the loop calls
:meth:`LoopPart.tick`, which must return quickly and never block; :meth:`LoopPart.close` is
called once at shutdown, before the catalog is closed. The loop turns at least every
``snapd.daemon.service.POLL_MS``, which bounds how late a result is taken in.
"""

from __future__ import annotations

from typing import Protocol


class LoopPart(Protocol):
    def tick(self, now: float) -> None:
        """Take in finished work and start what is due (``now``: time.monotonic())."""

    def close(self) -> None:
        """Stop: nothing is lost (unfinished work is recorded and resumed at the next start)."""
