"""The daemon's answers to ``snapd ctl`` (the :class:`~snapd.ctl.CtlHandler` the server calls):
status, rules, on-demand snapshots, the kill switch, reload.

The control socket answers from the first moment, while the probes still compile: ``status``
says ``starting`` until every rule of the directory has been armed (or refused)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from snapd import kernel, procfs
from snapd.content import SnapshotMode, parse_spec
from snapd.daemon.admission import Admission
from snapd.daemon.compare import Comparisons
from snapd.daemon.dumps import Dumps
from snapd.daemon.reports import Reports
from snapd.daemon.request import CoreRequest
from snapd.daemon.rulesync import RuleSet
from snapd.errors import SnapdError
from snapd.probe import Probes
from snapd.probe.targets import describe
from snapd.store import PauseSwitch
from snapd.template import DEFAULT_TEMPLATE

log = logging.getLogger("snapd")

ON_DEMAND_RULE = "ctl-snap"


class Control:
    """``reload`` re-reads the rules directory; ``changed`` is called after pause and resume
    (the daemon's status line)."""

    def __init__(
        self,
        rules: RuleSet,
        probes: Probes,
        admission: Admission,
        dumps: Dumps,
        switch: PauseSwitch,
        reload: Callable[[], None],
        changed: Callable[[], None],
        phase: Callable[[], str],
        *,
        reports: Reports | None = None,
        compare: Comparisons | None = None,
    ) -> None:
        self._rules = rules
        self._probes = probes
        self._admission = admission
        self._dumps = dumps
        self._switch = switch
        self._reload = reload
        self._changed = changed
        self._phase = phase
        self._reports = reports
        self._compare = compare
        #: the Prometheus text of the daemon's metrics (snapd.daemon.metricsfeed)
        self.metrics_text: Callable[[], str] | None = None

    @property
    def ready(self) -> bool:
        return self._phase() == "ready"

    def status(self) -> dict[str, Any]:
        suppressed: dict[str, int] = {}
        for st in self._rules.states.values():
            for k, v in st.suppressed.items():
                suppressed[k] = suppressed.get(k, 0) + v
        worker = self._dumps.worker
        busy = worker.busy
        return {
            "state": self._phase(),
            "rules": len(self._rules.states),
            "bad_rule_files": len(self._rules.bad),
            # Not while the probes compile in another thread; nothing has run in them yet.
            "probes": self._probes.stats() if self.ready else {},
            "events": self._admission.events,
            "suppressed": suppressed,
            "cores": self._dumps.cores,
            "failed": self._dumps.failed,
            "paused": self._switch.get().to_dict(),
            "dumping": {"pid": busy.request.pid, "rule": busy.request.rule} if busy else None,
            "queued": worker.waiting(),
            "reports": self._reports.status() if self._reports else None,
            "dumper": worker.pid,
            "kernel": kernel.summary(),
        }

    def rules(self, matches: bool = False) -> list[dict[str, Any]]:
        """Every rule with its STATE: armed, waiting for target, muted (budget spent), last good
        version kept (bad edit: why); every file that is not loaded, as invalid: why. With
        ``matches``, the processes each rule selects right now, as the kernel does."""
        if not self.ready:
            return [{"path": p, "state": "starting: not armed yet"} for p in self._rules.files()]
        out: list[dict[str, Any]] = []
        loaded = {st.rule.path for st in self._rules.states.values()}
        targets = self._probes.targets()
        for st in self._rules.states.values():
            pids = targets.get(st.rule.name, [])
            row: dict[str, Any] = {
                **st.to_dict(),
                "state": st.state(len(pids)),
                "targets": len(pids),
                "muted": self._probes.muted_count(st.rule.name),  # skipped in the kernel
            }
            if st.bad_edit:
                row["errors"] = list(self._rules.bad.get(st.rule.path, (st.bad_edit,)))
            if matches:
                row["matches"] = [describe(pid) for pid in pids]
            out.append(row)
        for p, e in self._rules.bad.items():
            if p not in loaded:
                out.append({"path": p, "state": f"invalid: {e[0]}", "errors": list(e)})
        return out

    def snap(self, pid: int, content: str | None, snapshot: str | None, uid: int) -> Future[Any]:
        if self._switch.paused:
            raise SnapdError("snapshots are paused (snapd ctl resume)")
        if pid == os.getpid():
            raise SnapdError(f"pid {pid} is this snapd daemon: it cannot snapshot itself")
        spec = parse_spec(content or "default")
        try:
            mode = SnapshotMode(snapshot or SnapshotMode.AUTO.value)
        except ValueError as err:
            known = ", ".join(m.value for m in SnapshotMode)
            raise SnapdError(f"unknown snapshot mode {snapshot!r}; use one of: {known}") from err
        try:
            procfs.stat(pid)
        except SnapdError as err:
            raise SnapdError(str(err)) from err
        req = CoreRequest(
            rule=ON_DEMAND_RULE,
            pid=pid,
            tid=None,
            trigger={"kind": "ctl", "uid": uid},
            content=spec,
            mode=mode,
            template=DEFAULT_TEMPLATE,
        )
        fut = self._dumps.submit_waiting(req)
        if fut is None:
            raise SnapdError(f"pid {pid}: cannot start a core (see the daemon's log)")
        return fut

    def diff(self, a: int, b: int, top: int | None) -> Future[Any]:
        if self._compare is None:
            raise SnapdError("this daemon does not compare cores")
        return self._compare.diff(a, b, top)

    def series(self, core_id: int) -> Future[Any]:
        if self._compare is None:
            raise SnapdError("this daemon does not compare cores")
        return self._compare.series(core_id)

    def pause(self, reason: str, uid: int) -> dict[str, object]:
        state = self._switch.pause(reason, uid)
        self._dumps.cancel_queued("cancelled: snapshots paused")
        log.warning("snapshots paused by uid %d%s", uid, f": {reason}" if reason else "")
        self._changed()
        return state.to_dict()

    def resume(self, uid: int) -> dict[str, object]:
        state = self._switch.resume(uid)
        log.warning("snapshots resumed by uid %d", uid)
        self._changed()
        return state.to_dict()

    def metrics(self) -> str:
        if self.metrics_text is None:
            raise SnapdError("this daemon keeps no metrics")
        return self.metrics_text()

    def reload(self, uid: int) -> dict[str, Any]:
        self._reload()
        return {"rules": len(self._rules.states), "bad_rule_files": len(self._rules.bad)}
