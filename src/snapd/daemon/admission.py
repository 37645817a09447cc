"""Admission: whether a firing becomes a core, and the request it becomes.

Every firing is counted for its rule; one that does not become a core is counted under the
reason (paused, inactive, max_cores, min_interval, global_cap, busy, gone, own), so ``snapd ctl
status`` shows a storm for what it is; what makes further firings useless (a spent budget, a
min_interval running) mutes the rule in the kernel (:mod:`snapd.daemon.mutes`). A target the
probe stopped (``stop: kernel``) is either admitted with no dump ahead of it or resumed with
SIGCONT at once: it never waits in a queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass

from snapd import procfs
from snapd.daemon.journal import StopJournal
from snapd.daemon.limits import Limiter, RuleState
from snapd.daemon.mutes import Mutes
from snapd.daemon.request import CoreRequest
from snapd.daemon.rulesync import RuleSet
from snapd.daemon.worker import Worker
from snapd.errors import SnapdError
from snapd.probe import Event
from snapd.store import PauseSwitch
from snapd.text import safe

log = logging.getLogger("snapd")


@dataclass(frozen=True)
class Admitted:
    request: CoreRequest
    state: RuleState
    start: int  # the process's start time (/proc/PID/stat): a recycled pid is another process
    now: float  # time.monotonic() of the admission
    cores: int = 1  # of the rule's budget: this core and its repeats


class Admission:
    def __init__(
        self,
        rules: RuleSet,
        switch: PauseSwitch,
        limiter: Limiter,
        worker: Worker,
        journal: StopJournal,
        mutes: Mutes,
    ) -> None:
        self.rules = rules
        self.switch = switch
        self.limiter = limiter
        self.worker = worker
        self.journal = journal
        self.mutes = mutes
        self.events = 0

    def admit(self, ev: Event) -> Admitted | None:
        """The request ``ev`` becomes, or None (the target released, the reason counted)."""
        self.events += 1
        st = self.rules.states.get(ev.rule)
        if st is None:
            self.release(ev)
            return None
        st.seen += 1
        if self.rules.probes.is_own(ev.pid):
            # The kernel leaves snapd's own processes out; this is the same rule, kept here too.
            st.suppressed["own"] += 1
            self.release(ev)
            return None
        try:
            start = procfs.stat(ev.pid).starttime
        except SnapdError:
            if not st.suppressed["gone"]:  # the first per rule: the rest are counted in ctl status
                log.warning(
                    "rule %s fired in pid %d (%s), which exited before it could be halted: no core%s"
                    " (more such are counted in `snapd ctl status`, suppressed: gone)",
                    ev.rule,
                    ev.pid,
                    safe(ev.comm),
                    "" if ev.stopped else "; `action: {stop: kernel}` halts a target at the event",
                )
            st.suppressed["gone"] += 1
            self.journal.done(ev.pid)
            return None
        now = time.monotonic()
        busy = self.worker.waiting() + (1 if self.worker.busy else 0)
        reason = "paused" if self.switch.paused else self.limiter.admit(st, (ev.pid, start), now, busy)
        if reason is None and ev.stopped and busy:
            reason = "busy"  # a stopped target never waits for another dump
        if reason:
            st.suppressed[reason] += 1
            self.release(ev)
            if reason == "max_cores":
                self.mutes.update(st)
            return None
        n = self.limiter.taken(st, (ev.pid, start), now)
        self.mutes.took_core(st, ev.pid, now)
        return Admitted(CoreRequest.from_event(st.rule, ev), st, start, now, n)

    def release(self, ev: Event) -> None:
        """A probe-stopped target we will not dump: resume it now."""
        if ev.stopped:
            resume(ev.pid, self.journal)


def resume(pid: int, journal: StopJournal) -> None:
    """SIGCONT a target the probe stopped, and forget it in the journal (a no-op if it was
    never journalled)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    journal.done(pid)
