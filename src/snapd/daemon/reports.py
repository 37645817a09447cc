"""The morning report of every published core, computed beside the dumps, never in their way.

A core is queued for its report when it is published (:meth:`Reports.published`, the dumps'
post-publish hook), rule cores and ``ctl snap`` cores alike: by then the target was resumed
(the writer resumes it before it links the file, snapd.core.writer), so a report never runs
while the target is halted. Reports run in the sandboxed report worker
(:func:`snapd.report.start_report`: a fresh, confined interpreter at nice 19 and idle I/O,
killed at its deadline), at most ``at_once`` at a time, and a new one starts only while no dump
is in flight or queued: a report never delays the next dump. The loop watches each worker's
pipe (:class:`~snapd.daemon.hooks.FdWatch`) and ticks us; nothing here blocks.

Each report is stored in the catalog (``catalog.reports``) with when it was queued, started and
ended, and its WHERE; a report that fails or times out is ``failed: why`` beside a core that
stays listed and usable. Reports queued or running when the daemon stops run at its next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from snapd import report
from snapd.core.info import CoreInfo
from snapd.daemon.hooks import FdWatch
from snapd.daemon.request import CoreRequest
from snapd.errors import SnapdError
from snapd.report import EventStack, ReportJob, ReportLimits
from snapd.report.model import EventError
from snapd.store import Catalog, Entry, NoSuchCore

log = logging.getLogger("snapd")

#: While a worker runs, it is polled at least this often (its log pipe drained), whatever woke
#: the loop.
POLL_S = 0.25


@dataclass(frozen=True)
class ReportSettings:
    """Everything the daemon's reports and diffs may use: one record (daemon flags today)."""

    #: per report: threads x frames, Python frames, modules, deadline, address space
    limits: ReportLimits = field(default_factory=ReportLimits)
    #: reports computed at the same time (each is one sandboxed process)
    at_once: int = 1
    #: reports waiting beyond this are not computed (``failed: skipped: ...``)
    max_queued: int = 256
    #: compute reports at all
    enabled: bool = True
    #: ``ctl diff`` / ``ctl series``: wall-clock seconds and address space of the worker
    diff_deadline: float = 120.0
    diff_memory: int = 4 << 30
    #: ``ctl series``: the most cores one series compares
    max_series: int = 32


@dataclass
class _Running:
    job: ReportJob
    fd: int  # our dup of the worker's result pipe, watched by the loop (closed by us)
    deadline: float  # time.monotonic()


class Reports:
    """The reports of published cores: a queue, the workers running, their results stored."""

    def __init__(
        self,
        catalog: Catalog,
        settings: ReportSettings,
        loop: FdWatch,
        dumps_idle: Callable[[], bool],
    ) -> None:
        """``dumps_idle()``: true when no dump is in flight or queued."""
        self.catalog = catalog
        self.settings = settings
        self.loop = loop
        self._dumps_idle = dumps_idle
        self.queue: deque[int] = deque()
        self.running: dict[int, _Running] = {}
        self.complete = 0
        self.failed = 0

    # -- in ---------------------------------------------------------------------------------

    def published(self, entry: Entry, req: CoreRequest, info: CoreInfo | None = None) -> None:
        """A core was published: queue its report (the post-publish hook of Dumps)."""
        if not self.settings.enabled:
            return
        request = {"firing_tid": req.tid, "event": req.event.to_dict() if req.event else None}
        if not self.catalog.reports.queue(entry.id, firing=req.firing or entry.id, request=request):
            return  # removed meanwhile
        if len(self.queue) >= self.settings.max_queued:
            why = f"skipped: {len(self.queue)} reports were queued already"
            self.catalog.reports.fail(entry.id, why)
            self.failed += 1
            log.warning("core %d: report %s", entry.id, why)
            return
        self.queue.append(entry.id)

    def resume_unfinished(self) -> None:
        """Queue the reports a previous daemon left queued or running (start-up)."""
        ids = [st.core_id for st in self.catalog.reports.unfinished()]
        if ids and self.settings.enabled:
            log.info("reports: %d left unfinished by the previous daemon, queued again", len(ids))
            self.queue.extend(ids)

    def status(self) -> dict[str, int]:
        return {
            "running": len(self.running),
            "queued": len(self.queue),
            "complete": self.complete,
            "failed": self.failed,
        }

    # -- the loop ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for core_id in list(self.running):
            self._poll(core_id)
        while self.queue and len(self.running) < max(1, self.settings.at_once) and self._dumps_idle():
            self._start(self.queue.popleft())

    def next_tick(self) -> float | None:
        if self.running:
            now = time.monotonic()
            return min(min(r.deadline for r in self.running.values()), now + POLL_S)
        if self.queue:
            return time.monotonic() + POLL_S  # waiting for the dumps to be idle
        return None

    def removed(self, entry: Entry) -> None:
        """Retention removed ``entry`` (:attr:`Catalog.removed`): its report is not wanted any
        more, and a worker still reading the unlinked file keeps its blocks from the next core."""
        with contextlib.suppress(ValueError):
            self.queue.remove(entry.id)
        run = self.running.pop(entry.id, None)
        if run is not None:
            self._unwatch(run)
            run.job.kill()
            log.info("core %d: report cancelled: retention removed the core", entry.id)

    def close(self) -> None:
        """Kill the workers; their rows stay ``running`` and run again at the next start."""
        for core_id in list(self.running):
            run = self.running.pop(core_id)
            self._unwatch(run)
            run.job.kill()

    # -- one report -------------------------------------------------------------------------

    def _start(self, core_id: int) -> None:
        try:
            entry = self.catalog.get(core_id)
            st = self.catalog.reports.get(core_id)
        except NoSuchCore:
            return  # removed while queued: its row went with it
        except SnapdError as err:
            log.error("core %d: cannot start its report: %s", core_id, err)
            return
        if st is None:
            return
        if not entry.complete:
            self._store(core_id, {"error": f"the core is {entry.status}", "threads": [], "modules": []})
            return
        event = None
        raw = st.request.get("event")
        if isinstance(raw, dict):
            try:
                event = EventStack.from_dict(raw)
            except (EventError, KeyError, ValueError) as err:
                log.warning("core %d: the event's stack is unusable: %s", core_id, err)
        firing = st.request.get("firing_tid")
        self.catalog.reports.start(core_id)
        job = report.start_report(
            entry.path,
            firing_tid=firing if isinstance(firing, int) else None,
            limits=self.settings.limits,
            context=entry.context,
            event=event,
        )
        fd = job.fileno()
        if fd < 0:  # failed at once (the core file is gone, no worker could start)
            rep = job.step(0)
            assert rep is not None
            self._store(core_id, rep)
            return
        mine = os.dup(fd)  # the job closes its fd when done: the loop watches a dup of ours
        os.set_inheritable(mine, False)
        run = _Running(job, mine, job.started + self.settings.limits.deadline)
        self.running[core_id] = run
        self.loop.watch_fd(mine, lambda: self._poll(core_id))

    def _poll(self, core_id: int) -> None:
        run = self.running.get(core_id)
        if run is None:
            return
        rep = run.job.step(0)
        if rep is None:
            return
        del self.running[core_id]
        self._unwatch(run)
        self._store(core_id, rep)

    def _unwatch(self, run: _Running) -> None:
        if run.fd >= 0:
            self.loop.unwatch_fd(run.fd)
            with contextlib.suppress(OSError):
                os.close(run.fd)
            run.fd = -1

    def _store(self, core_id: int, rep: dict[str, object]) -> None:
        where = report.where(rep)
        try:
            status = self.catalog.reports.finish(core_id, rep, where)
        except SnapdError as err:
            log.error("core %d: cannot record its report: %s", core_id, err)
            return
        if rep.get("error"):
            self.failed += 1
            log.warning("core %d: report %s", core_id, status)
        else:
            self.complete += 1
            elapsed = rep.get("elapsed")
            took = f" in {elapsed:.2f} s" if isinstance(elapsed, float) else ""
            log.info("core %d: report done%s: %s", core_id, took, where)
