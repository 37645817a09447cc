"""What the log says of a rule's targets after its load.

At load the daemon logs "armed, N process(es) targeted now" or "waiting for target"
(:mod:`snapd.daemon.rulesync`). The operator reading the journal in the morning must also see
when that changed: the service the rule waited for started at 02:13, or its last target went.
Each rescan (the kernel's fork and exec probes add targets in between) the daemon compares, and
logs a change as ``snapd ctl rules`` would show it. A target that comes and goes every few
seconds (a rule on a short-lived command) must not flood the journal: a rule gets
:data:`BURST` lines, then one per :data:`REFILL_S`; a change not told then is told when a line
is due, with how many changes it sums up. The log always ends up saying the present state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BURST = 4  # lines a rule may log at once
REFILL_S = 60.0  # then one line per this many seconds
SHOWN = 3  # processes named in a line


@dataclass
class TargetLog:
    """One rule's targets as the log last told them (``told``) and as last seen."""

    told: bool = False
    seen: bool = False
    changes: int = 0  # changes seen since the last line
    tokens: float = BURST
    at: float = 0.0  # when ``tokens`` was last refilled (time.monotonic())

    def loaded(self, targeted: bool, now: float) -> None:
        """The load's own line said ``targeted``."""
        self.told = self.seen = targeted
        self.changes, self.tokens, self.at = 0, BURST, now

    def observe(
        self, name: str, pids: list[int], state: str, now: float, comm: Callable[[int], str]
    ) -> str | None:
        """The line to log now that rule ``name`` targets ``pids`` (``state``: its STATE in
        ``ctl rules``), or None."""
        targeted = bool(pids)
        if targeted != self.seen:
            self.seen = targeted
            self.changes += 1
        self.tokens = min(BURST, self.tokens + (now - self.at) / REFILL_S)
        self.at = now
        if targeted == self.told or self.tokens < 1:
            return None
        self.tokens -= 1
        summed = f" ({self.changes} changes since the last line)" if self.changes > 1 else ""
        self.told, self.changes = targeted, 0
        if not targeted:
            return f"rule {name}: {state}: no process targeted any more{summed}"
        shown = ", ".join(f"{p} ({comm(p)})" for p in pids[:SHOWN])
        more = f" and {len(pids) - SHOWN} more" if len(pids) > SHOWN else ""
        return f"rule {name}: {state}, {len(pids)} process(es) targeted now: {shown}{more}{summed}"
