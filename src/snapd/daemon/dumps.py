"""The life of an admitted core request: reserved in the catalog, dumped by the worker,
published or failed, then ``action.run``; its repeat cores; cancellation.

Whatever fails, a request ends as a complete or a failed entry (or, when even the catalog cannot
write, as a pending one that the next start-up fails): never listed half-written, and a failed
attempt does not use up the rule's ``max_cores``. A firing books its repeat cores in the budget
when it is admitted (max_cores counts cores, not firings); a repeat that is not taken gives its
core back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from snapd import procfs
from snapd.core import CoreInfo
from snapd.daemon.actionrun import run_action
from snapd.daemon.admission import Admitted, resume
from snapd.daemon.journal import StopJournal
from snapd.daemon.limits import RuleState
from snapd.daemon.mutes import Mutes
from snapd.daemon.repeats import Repeat, Repeats
from snapd.daemon.request import CoreRequest
from snapd.daemon.rulesync import RuleSet
from snapd.daemon.worker import Job, Result, Worker
from snapd.errors import SnapdError
from snapd.procfs.context import capture
from snapd.store import Catalog, Entry

log = logging.getLogger("snapd")


class Dumps:
    def __init__(
        self, catalog: Catalog, worker: Worker, journal: StopJournal, rules: RuleSet, mutes: Mutes
    ) -> None:
        self.catalog = catalog
        self.worker = worker
        self.journal = journal
        self.rules = rules
        self.mutes = mutes
        self.repeats = Repeats()
        self.futures: dict[int, Future[Any]] = {}  # entry id -> a ctl snap waiting for it
        self.cores = 0
        self.failed = 0
        #: called with each published entry, its request and what the writer reported, after it
        #: is listed and its ctl snap answered (reports, shipping, metrics); the target runs again
        #: by then. An error of one is logged: the core is published whatever a hook says.
        self.after_publish: list[Callable[[Entry, CoreRequest, CoreInfo], None]] = []
        #: called with (request, stage, why) when a dump fails (metrics)
        self.after_failure: list[Callable[[CoreRequest, str, str], None]] = []
        #: the first stage of a published core's work after publication (snapd.store.shipping),
        #: recorded with it; "" for none
        self.after_stage = ""

    def start(self, adm: Admitted) -> None:
        """Reserve and queue an admitted firing's core, and schedule its repeats."""
        req = adm.request
        job = self.reserve(req)
        if job is None:
            if req.kernel_stopped:
                resume(req.pid, self.journal)
            self._give_back(adm.state, adm.cores)
            adm.state.failed += 1
            return
        self.worker.submit(job)
        core = adm.state.rule.action.core
        self.repeats.schedule(
            dataclasses.replace(req, firing=job.entry_id),  # its repeats: one series
            start=adm.start,
            digest=adm.state.digest,
            count=adm.cores,
            interval_ns=core.interval_ns,
            now=time.monotonic(),  # the first core's reservation, not the firing
        )

    def _give_back(self, st: RuleState | None, n: int = 1) -> None:
        """Cores booked for ``st`` that will not be taken return to its budget."""
        if st is not None and n:
            st.cores = max(0, st.cores - n)
            self.mutes.update(st)

    def _state_of(self, rule: str, digest: str | None = None) -> RuleState | None:
        st = self.rules.states.get(rule)
        return st if st is not None and (digest is None or st.digest == digest) else None

    def reserve(self, req: CoreRequest) -> Job | None:
        """A catalog entry for ``req`` (its /proc context captured now, while the process is
        alive), or None after logging why not."""
        try:
            ctx = capture(req.pid)  # fds, limits, maps, cgroup...
            entry = self.catalog.reserve(
                rule=req.rule,
                pid=req.pid,
                trigger=req.trigger,
                content=str(req.content),
                snapshot=req.mode.value,
                template=req.template,
                context=ctx,
            )
        except (SnapdError, OSError) as err:
            log.error("rule %s: pid %d: cannot start a core: %s", req.rule, req.pid, err)
            return None
        return Job(entry.id, entry.path, req)

    def run_due(self, now: float) -> None:
        for rep in self.repeats.take_due(now):
            self._due(rep)

    def _due(self, rep: Repeat) -> None:
        """A repeat core fell due: reserve and queue it, if its rule is still loaded (a rule
        deleted or edited takes no more cores) and its process is still the same one."""
        req = rep.request
        st = self._state_of(req.rule, rep.digest)
        if st is None:
            log.info("rule %s: changed or removed: repeat core %d dropped", req.rule, rep.n)
            return
        try:
            same = procfs.stat(req.pid).starttime == rep.start
        except SnapdError:
            same = False
        if not same:
            log.info("rule %s: pid %d exited before repeat core %d", req.rule, req.pid, rep.n)
            self._give_back(st, rep.count - rep.n + 1)  # this one and the rest of the series
            return
        job = self.reserve(req)
        if job is not None:
            self.worker.submit(job)
        else:
            self._give_back(st)
        self.repeats.add(rep.next(time.monotonic()))

    def fail_entry(self, entry_id: int, why: str) -> None:
        """Mark a catalog entry failed; a catalog that cannot write (disk full) is logged, not
        raised: it must not stop the daemon, nor a shutdown before it resumes its targets."""
        try:
            self.catalog.fail(entry_id, why)
        except SnapdError as err:
            # Left pending: never listed; recovery fails it (and removes its file) at next start.
            log.error("core %d: cannot record that it failed (%s): %s", entry_id, why, err)

    def finish(self, res: Result) -> None:
        """A dump is over: publish or fail its entry, answer a waiting ctl snap, run the action."""
        job = res.job
        req = job.request
        stage = "dump"
        if res.info is not None:
            try:
                entry = self.catalog.publish(job.entry_id, res.info, after=self.after_stage)
            except SnapdError as err:
                # The core took the last free blocks and SQLite cannot commit, say: the core is
                # lost, the daemon is not.
                res = Result(job, None, f"cannot record the core in the catalog: {err}")
                stage = "catalog"
        st = self.rules.states.get(req.rule)
        fut = self.futures.pop(job.entry_id, None)
        if res.info is None:
            self.fail_entry(job.entry_id, res.error)
            self.failed += 1
            if st:
                st.failed += 1
                self._give_back(st)  # a failed attempt does not use up max_cores
            if os.path.exists(f"/proc/{req.pid}"):
                log.error("rule %s: pid %d: core failed: %s", req.rule, req.pid, res.error)
            else:  # it exited between its event and the dump: a race to report, not a fault
                log.warning(
                    "rule %s: pid %d exited before its core was taken (%s)", req.rule, req.pid, res.error
                )
            if fut:
                fut.set_exception(SnapdError(res.error))
            for failed in self.after_failure:
                failed(req, stage, res.error)
            return
        self.cores += 1
        info = res.info
        note = f" (fork not used: {info.fallback})" if info.fallback else ""
        log.info(
            "rule %s: pid %d (%s): core %s, %d MiB on disk, froze %.1f ms, %s%s",
            req.rule,
            req.pid,
            info.comm,
            entry.path,
            info.disk_bytes >> 20,
            info.freeze_seconds * 1e3,
            info.snapshot,
            note,
        )
        if fut:
            fut.set_result(entry.to_dict(context=False))
        if entry.complete:
            for hook in self.after_publish:
                try:
                    hook(entry, req, info)
                except SnapdError as err:
                    log.error("core %d: after publishing: %s", entry.id, err)
        if st and st.rule.action.run:
            run_action(st.rule.action.run, core=entry.path, rule=req.rule, pid=req.pid, comm=info.comm)

    def submit_waiting(self, req: CoreRequest) -> Future[Any] | None:
        """Reserve and queue ``req`` for a caller that waits for its entry (ctl snap)."""
        job = self.reserve(req)
        if job is None:
            return None
        fut: Future[Any] = Future()
        self.futures[job.entry_id] = fut
        self.worker.submit(job)
        return fut

    def cancel_queued(self, why: str) -> None:
        """Fail every job not started yet and forget the repeats (pause, shutdown)."""
        for job in self.worker.drop_queued():
            if job.request.kernel_stopped:
                # The probe stopped it and only the worker would have resumed it: a job
                # submitted in this loop iteration may not have been picked up yet.
                resume(job.request.pid, self.journal)
            self.fail_entry(job.entry_id, why)
            self._give_back(self._state_of(job.request.rule))
            fut = self.futures.pop(job.entry_id, None)
            if fut:
                fut.set_exception(SnapdError(why))
        for rep in self.repeats.scheduled:
            self._give_back(self._state_of(rep.request.rule, rep.digest))
        self.repeats.clear()
