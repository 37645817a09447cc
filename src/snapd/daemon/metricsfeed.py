"""The daemon's one :class:`~snapd.ship.metrics.Metrics`: fed from what the daemon already
counts, rendered for ``snapd ctl metrics``, and kept current in a node_exporter textfile.

Per-rule event counters are taken from the rules' own counters (snapd.daemon.limits.RuleState:
``seen`` and ``suppressed`` by reason) as increments since the last look, so a reloaded rule
(new counters from zero) never makes a Prometheus counter go down; fired = seen - suppressed.
Cores, failures, freeze and dump seconds come from the end of each dump. Gauges (bytes on disk,
upload backlog) are refreshed by the parts that know them, just before each rendering.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from snapd.core.info import CoreInfo
from snapd.daemon.limits import RuleState
from snapd.daemon.rulesync import RuleSet
from snapd.errors import SnapdError
from snapd.ship.metrics import Metrics

log = logging.getLogger("snapd")


class MetricsFeed:
    def __init__(
        self,
        metrics: Metrics,
        rules: RuleSet,
        *,
        textfile: str | None = None,
        interval: float = 15.0,
    ) -> None:
        self.metrics = metrics
        self.rules = rules
        self.textfile = textfile
        self.interval = interval
        #: before each rendering: the parts that own a gauge set it
        self.refreshers: list[Callable[[Metrics], None]] = []
        self._last: dict[str, tuple[RuleState, int, dict[str, int]]] = {}
        self._next_write = 0.0
        self._failing = ""

    # --- what the daemon reports ---------------------------------------------------------------
    def core_published(self, rule: str, info: CoreInfo) -> None:
        self.metrics.core_published(rule, info.freeze_seconds, info.elapsed_seconds)

    def dump_failed(self, rule: str, stage: str) -> None:
        self.metrics.dump_failed(rule, stage)

    def sync(self) -> None:
        """Turn the rules' counters into counter increments since the last call."""
        for name, (st, seen, supp) in self._last.items():
            self._add(name, st, seen, supp)  # that state's counts since the last look
        last: dict[str, tuple[RuleState, int, dict[str, int]]] = {}
        for name, st in self.rules.states.items():
            prev = self._last.get(name)
            if prev is None or prev[0] is not st:
                self._add(name, st, 0, {})  # loaded (or reloaded) since: all it counted
            last[name] = (st, st.seen, dict(st.suppressed))
        self._last = last

    def _add(self, name: str, st: RuleState, seen: int, supp: dict[str, int]) -> None:
        d_seen = max(0, st.seen - seen)
        d_supp = {r: n - supp.get(r, 0) for r, n in st.suppressed.items() if n > supp.get(r, 0)}
        if d_seen:
            self.metrics.events_seen.labels(name).inc(d_seen)
        for reason, n in d_supp.items():
            self.metrics.events_suppressed.labels(name, reason).inc(n)
        fired = d_seen - sum(d_supp.values())
        if fired > 0:
            self.metrics.events_fired.labels(name).inc(fired)

    # --- output --------------------------------------------------------------------------------
    def render(self) -> str:
        self.sync()
        for refresh in self.refreshers:
            refresh(self.metrics)
        return self.metrics.render().decode()

    def tick(self, now: float) -> None:
        if self.textfile and now >= self._next_write:
            self._next_write = now + self.interval
            self.write()

    def next_tick(self) -> float | None:
        return self._next_write if self.textfile else None

    def write(self) -> None:
        if not self.textfile:
            return
        self.render()
        try:
            self.metrics.write_textfile(self.textfile)
        except (OSError, SnapdError, ValueError) as err:
            if str(err) != self._failing:
                log.warning("metrics textfile not written: %s", err)
                self._failing = str(err)
            return
        self._failing = ""

    def close(self) -> None:
        self.write()
