"""Whether a firing becomes a core: per-rule, per-process and daemon-wide limits.

Every firing that does not become a core is counted under the reason it was suppressed, so
``snapd ctl status`` shows a storm for what it is.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from snapd.daemon.targetlog import TargetLog
from snapd.rules.model import Rule

HOUR = 3600.0


@dataclass
class RuleState:
    """A loaded (armed) rule and its counters; replaced (counters reset) when its file's content
    changes. ``bad_edit``: its file was edited into something that cannot be loaded, and this
    last good version keeps running; why, with file:line:col."""

    rule: Rule
    digest: str
    seen: int = 0
    cores: int = 0  # taken, being taken or due (repeats): what max_cores counts
    failed: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)
    last_by_process: dict[tuple[int, int], float] = field(default_factory=dict)
    bad_edit: str = ""
    muted: bool = False  # muted in the kernel: max_cores reached
    targets_log: TargetLog = field(default_factory=TargetLog)  # what the log said of its targets

    @property
    def spent(self) -> bool:
        return self.cores >= self.rule.limits.max_cores

    def state(self, targets: int) -> str:
        """What ``ctl rules`` shows in its STATE column."""
        if self.bad_edit:
            return f"last good version kept (bad edit: {self.bad_edit})"
        if self.spent:
            return "muted (budget spent)"
        return "armed" if targets else "waiting for target"

    def to_dict(self) -> dict[str, object]:
        r = self.rule
        return {
            "name": r.name,
            "path": r.path,
            "trigger": r.kind.value,
            "description": r.description,
            "stop": r.action.stop.value,
            "snapshot": r.action.snapshot.value,
            "content": str(r.action.core.content),
            "max_cores": r.limits.max_cores,
            "active": str(r.active) if r.active else "always",
            "seen": self.seen,
            "cores": self.cores,
            "failed": self.failed,
            "suppressed": dict(self.suppressed),
        }


class Limiter:
    """Daemon-wide cap: at most ``per_hour`` cores in any sliding hour, ``queue`` waiting."""

    def __init__(self, per_hour: int = 60, queue: int = 8) -> None:
        self.per_hour = per_hour
        self.queue = queue
        self.recent: collections.deque[float] = collections.deque()

    def admit(
        self,
        st: RuleState,
        process: tuple[int, int],
        now: float,
        waiting: int,
        wall: dt.datetime | None = None,
    ) -> str | None:
        """None if a core may be taken now, else the reason to suppress (a counter name)."""
        rule = st.rule
        if not rule.is_active(wall):
            return "inactive"
        if st.cores >= rule.limits.max_cores:
            return "max_cores"
        last = st.last_by_process.get(process)
        if last is not None and now - last < rule.limits.min_interval_ns / 1e9:
            return "min_interval"
        while self.recent and now - self.recent[0] > HOUR:
            self.recent.popleft()
        if len(self.recent) >= self.per_hour:
            return "global_cap"
        if waiting >= self.queue:
            return "busy"
        return None

    def taken(self, st: RuleState, process: tuple[int, int], now: float) -> int:
        """Book an admitted firing: it takes ``repeat`` cores of the rule's budget, or what is
        left of it; returns how many (at least 1)."""
        n = max(1, min(st.rule.action.core.repeat, st.rule.limits.max_cores - st.cores))
        st.cores += n
        st.last_by_process[process] = now
        self.recent.append(now)
        return n
