"""What each ctl command does: one handler per entry of :data:`snapd.ctl.protocol.COMMANDS`.

The catalog's commands are answered here, from the catalog; the others go to the daemon's
:class:`CtlHandler`. The request was parsed and the peer's access checked before a handler runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from snapd.ctl.peer import Peer
from snapd.ctl.protocol import COMMANDS, CtlError
from snapd.store.catalog import Catalog
from snapd.store.reports import ReportState

log = logging.getLogger("snapd.ctl")

#: What a handler returns: a JSON-able value, or a Future of one for slow work.
Reply = Any


class CtlHandler(Protocol):
    """What the daemon implements for the commands that need more than the catalog.

    Each method returns a JSON-able value (or a ``Future`` of one) and may raise
    :class:`~snapd.errors.SnapdError`, whose message goes back to the client.
    """

    def status(self) -> Reply:
        """Rules, probes, events seen/suppressed, cores taken, paused?"""

    def rules(self) -> Reply:
        """The loaded rules and their state (a list of objects)."""

    def snap(self, pid: int, content: str | None, snapshot: str | None, uid: int) -> Reply:
        """Take an on-demand snapshot of ``pid`` (``snapshot``: frozen, fork or auto, as
        ``snapd gcore --snapshot``); the catalog entry as a dict (via a Future)."""

    def diff(self, a: int, b: int, top: int | None) -> Reply:
        """Compare cores ``a`` and ``b`` (snapd.diff, with their contexts and reports): the
        diff's JSON plus ``text`` (via a Future)."""

    def series(self, core_id: int) -> Reply:
        """The trend of the series ``core_id`` belongs to (via a Future)."""

    def pause(self, reason: str, uid: int) -> Reply:
        """Stop every freeze and dump (persist with :class:`snapd.store.PauseSwitch`)."""

    def resume(self, uid: int) -> Reply: ...

    def reload(self, uid: int) -> Reply:
        """Re-read the rules directory (as SIGHUP does)."""


@dataclass(frozen=True)
class Request:
    """One parsed, authorized request, as a handler sees it."""

    args: dict[str, Any]
    peer: Peer
    handler: CtlHandler
    catalog: Catalog | None

    @property
    def store(self) -> Catalog:
        if self.catalog is None:
            raise CtlError("this daemon has no catalog")
        return self.catalog


def _with_report(d: dict[str, Any], st: ReportState | None, full: bool) -> dict[str, Any]:
    """An entry's dict with its report's state (``report_status`` ``none`` for a core without
    one: taken before reports, or with reports off) and, with ``full``, the report itself."""
    d["report_status"] = st.status if st is not None else "none"
    d["where"] = st.where if st is not None and st.done else ""
    if full:
        d["report_queued"] = st.queued if st is not None else None
        d["report_started"] = st.started if st is not None else None
        d["report_ended"] = st.ended if st is not None else None
        d["report"] = st.report if st is not None else None
    return d


def _list_cores(r: Request) -> Reply:
    # Cores, by default; attempts that left none ("failed: why") with --all.
    entries = r.store.list(
        rule=r.args.get("rule"),
        pid=r.args.get("pid"),
        since=r.args.get("since"),
        include_failed=bool(r.args.get("all")),
    )
    states = r.store.reports.states(e.id for e in entries)
    return [_with_report(e.to_dict(context=False), states.get(e.id), False) for e in entries]


def _info(r: Request) -> Reply:
    entry = r.store.get(r.args["id"])
    return _with_report(entry.to_dict(), r.store.reports.get(entry.id), True)


def _rm(r: Request) -> Reply:
    store = r.store
    log.info("ctl: uid %d removes core %d", r.peer.uid, r.args["id"])
    return store.remove(r.args["id"]).to_dict(context=False)


HANDLERS: dict[str, Callable[[Request], Reply]] = {
    "list-cores": _list_cores,
    "info": _info,
    "diff": lambda r: r.handler.diff(r.args["a"], r.args["b"], r.args.get("top")),
    "series": lambda r: r.handler.series(r.args["id"]),
    "status": lambda r: r.handler.status(),
    "rules": lambda r: r.handler.rules(),
    "rm": _rm,
    "snap": lambda r: r.handler.snap(
        r.args["pid"], r.args.get("content"), r.args.get("snapshot"), r.peer.uid
    ),
    "pause": lambda r: r.handler.pause(r.args.get("reason", ""), r.peer.uid),
    "resume": lambda r: r.handler.resume(r.peer.uid),
    "reload": lambda r: r.handler.reload(r.peer.uid),
}
assert HANDLERS.keys() == COMMANDS.keys(), "every command has exactly one handler"


def dispatch(cmd: str, request: Request) -> Reply:
    return HANDLERS[cmd](request)
