"""``snapd ctl diff ID_A ID_B`` and ``snapd ctl series ID``: cores of the catalog compared in a
bounded, confined subprocess (:mod:`snapd.diff.worker` through :mod:`snapd.sandbox`), with
what the catalog knows beside them (the /proc contexts: fds, limits, cgroup; the stack reports).

The ctl request gets a Future, answered from the loop when the worker is done (a deferred ctl
reply): the loop never waits for a diff. Two cores of different processes are refused at once
from the catalog (different pids), or by the worker (a pid reused: the start times differ).

A series is the cores of one firing (a ``repeat: N`` rule: they share the first core's id in
``catalog.reports``), or else the cores of the same rule and pid over time, at most
``max_series`` of them around the one named.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from snapd.daemon.hooks import FdWatch
from snapd.daemon.reports import ReportSettings
from snapd.diff.errors import DifferentProcesses
from snapd.diff.worker import MODULE, slim_context, slim_report
from snapd.errors import SnapdError
from snapd.sandbox import SYSTEM_READ, BoundedRun, Failure, Limits, code_paths
from snapd.store import Catalog, Entry

log = logging.getLogger("snapd")

#: comparisons running at once; one more is refused ("busy") rather than queued
MAX_RUNNING = 2
DEFAULT_TOP = 20


@dataclass
class _Running:
    what: str  # "diff of cores 3 and 5", for messages
    run: BoundedRun
    fd: int  # our dup of the worker's result pipe (closed by us)
    future: Future[Any]
    ids: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


class Comparisons:
    def __init__(self, catalog: Catalog, settings: ReportSettings, loop: FdWatch) -> None:
        self.catalog = catalog
        self.settings = settings
        self.loop = loop
        self.running: list[_Running] = []

    # -- ctl --------------------------------------------------------------------------------

    def diff(self, id_a: int, id_b: int, top: int | None = None) -> Future[Any]:
        if id_a == id_b:
            raise SnapdError(f"core {id_a} twice: give two cores of one process (snapd ctl list-cores)")
        a, b = self._complete(id_a), self._complete(id_b)
        if a.pid != b.pid:
            raise DifferentProcesses(
                f"core {a.id}",
                f"core {b.id}",
                f"pid {a.pid} ({a.comm}) and pid {b.pid} ({b.comm})",
                "diff two cores of the same process (snapd ctl list-cores --pid PID)",
            )
        args = {"mode": "diff", "top": DEFAULT_TOP if top is None else max(0, top), "workers": 1}
        return self._start(f"diff of cores {a.id} and {b.id}", [a, b], args, {})

    def series(self, core_id: int) -> Future[Any]:
        e = self._complete(core_id)
        st = self.catalog.reports.get(core_id)
        kind = "firing"
        ids = self.catalog.reports.firing(st.firing) if st is not None else [core_id]
        cores = [x for x in (self._entry(i) for i in ids) if x is not None and x.complete]
        if len(cores) < 2:
            kind = "rule and pid"
            cores = [x for x in self.catalog.list(rule=e.rule, pid=e.pid, include_failed=False) if x.complete]
        if len(cores) < 2:
            raise SnapdError(
                f"core {core_id} is the only core of pid {e.pid} under rule {e.rule}: "
                "a series needs two cores at least (a rule with action.core.repeat, or later cores)"
            )
        cores = _window(cores, core_id, self.settings.max_series)
        cores = [self._complete(x.id) for x in cores]  # with their contexts
        extra = {"kind": kind, "ids": [x.id for x in cores]}
        args = {"mode": "series", "workers": 1}
        return self._start(f"series of core {core_id}", cores, args, extra)

    # -- the loop ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for r in list(self.running):
            self._poll(r)

    def next_tick(self) -> float | None:
        return min((r.run.deadline for r in self.running), default=None)

    def close(self) -> None:
        for r in list(self.running):
            r.run.kill()
            self._done(r, SnapdError(f"{r.what}: cancelled, the daemon is stopping"))

    # -- one comparison ---------------------------------------------------------------------

    def _entry(self, core_id: int) -> Entry | None:
        try:
            return self.catalog.get(core_id)
        except SnapdError:
            return None

    def _complete(self, core_id: int) -> Entry:
        e = self.catalog.get(core_id)  # NoSuchCore: the client is told "not found"
        if not e.complete:
            raise SnapdError(f"core {core_id} is {e.status}: there is no core to compare")
        return e

    def _limits(self) -> Limits:
        s = self.settings
        return Limits(
            deadline=s.diff_deadline,
            cpu_seconds=max(1, math.ceil(s.diff_deadline)),
            address_space=s.diff_memory,
            nice=10,  # an operator waits for it, but the dumps come first
            idle_io=False,
            read_paths=(*SYSTEM_READ, *code_paths()),
        )

    def _start(
        self, what: str, cores: list[Entry], args: dict[str, Any], extra: dict[str, Any]
    ) -> Future[Any]:
        if len(self.running) >= MAX_RUNNING:
            raise SnapdError(f"busy: {len(self.running)} comparisons are running; try again shortly")
        fds: list[int] = []
        try:
            for e in cores:
                try:
                    fds.append(os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
                except OSError as err:
                    raise SnapdError(f"core {e.id}: {e.path}: {err.strerror or err}") from err
            args["cores"] = [
                {
                    "fd": fd,
                    "path": e.path,
                    "id": e.id,
                    "context": slim_context(e.context),
                    "report": self._report(e.id),
                }
                for e, fd in zip(cores, fds, strict=True)
            ]
            try:
                run = BoundedRun(MODULE, args, self._limits(), fds=fds)
            except OSError as err:
                raise SnapdError(f"{what}: cannot start the worker: {err.strerror or err}") from err
        finally:
            for fd in fds:  # the worker inherited them
                os.close(fd)
        mine = os.dup(run.fileno())
        os.set_inheritable(mine, False)
        r = _Running(what, run, mine, Future(), [e.id for e in cores], extra)
        self.running.append(r)
        self.loop.watch_fd(mine, lambda: self._poll(r))
        return r.future

    def _report(self, core_id: int) -> dict[str, Any] | None:
        st = self.catalog.reports.get(core_id)
        return slim_report(st.report) if st is not None else None

    def _poll(self, r: _Running) -> None:
        if r not in self.running:
            return
        res = r.run.step(0)
        if res is None:
            return
        if isinstance(res, Failure):
            self._done(r, SnapdError(f"{r.what} failed: {res.why}"))
            return
        value = res.value if isinstance(res.value, dict) else {}
        if "refused" in value:
            self._done(r, SnapdError(str(value["refused"])))
            return
        out: dict[str, Any] = dict(value.get("diff") or value.get("series") or {})
        if "diff" in value:
            for side, core_id in zip(("a", "b"), r.ids, strict=True):
                if isinstance(out.get(side), dict):
                    out[side]["id"] = core_id
        out.update(r.extra)
        out["text"] = str(value.get("text", ""))
        self._done(r, out)

    def _done(self, r: _Running, outcome: dict[str, Any] | SnapdError) -> None:
        self.running.remove(r)
        self.loop.unwatch_fd(r.fd)
        with contextlib.suppress(OSError):
            os.close(r.fd)
        if isinstance(outcome, SnapdError):
            log.info("ctl: %s", outcome)
            r.future.set_exception(outcome)
        else:
            r.future.set_result(outcome)


def _window(cores: list[Entry], core_id: int, most: int) -> list[Entry]:
    """At most ``most`` consecutive cores (oldest first) that include ``core_id``, centred on it
    where there are cores enough on both sides."""
    if len(cores) <= most:
        return cores
    i = next((n for n, e in enumerate(cores) if e.id == core_id), 0)
    lo = min(max(0, i - most // 2), len(cores) - most)
    return cores[lo : lo + most]
