"""Muting rules in the kernel once their events are useless, so that they cost nothing.

A rule whose ``max_cores`` is spent would suppress every further firing; one whose target just
took a core would suppress its firings for ``min_interval``. Reading and suppressing them in the
daemon costs up to a CPU under a storm. So the probe is told instead (``Probes.mute``,
``Probes.mute_process``), and skips the rule before its predicate: the events are counted in
the kernel (``kernel_muted``) and never sent. A rule is unmuted as soon as it can fire again (a
failed core gives its budget back); a process mute simply expires.
"""

from __future__ import annotations

from snapd.daemon.limits import RuleState
from snapd.probe import Probes
from snapd.probe.layout import MUTE_FOREVER


class Mutes:
    def __init__(self, probes: Probes) -> None:
        self.probes = probes

    def update(self, st: RuleState) -> None:
        """Mute ``st``'s rule when its budget is spent, unmute it when it is not (any more)."""
        if st.spent != st.muted:
            st.muted = st.spent
            self.probes.mute(st.rule.name, MUTE_FOREVER if st.muted else None)

    def took_core(self, st: RuleState, pid: int, now: float) -> None:
        """A core of ``pid`` was admitted for ``st`` at ``now`` (time.monotonic(), the clock of
        bpf_ktime_get_ns): its firings within min_interval are useless."""
        self.update(st)
        interval = st.rule.limits.min_interval_ns
        if interval > 0 and not st.muted:
            self.probes.mute_process(st.rule.name, pid, int(now * 1e9) + interval)
