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

    def rules(self, matches: bool = False) -> Reply:
        """The rules and their state (a list of objects); with ``matches``, the processes each
        selects right now."""

    def snap(self, pid: int, content: str | None, uid: int) -> Reply:
        """Take an on-demand snapshot of ``pid``; the catalog entry as a dict (via a Future)."""

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


def _list_cores(r: Request) -> Reply:
    # Cores, by default; attempts that left none ("failed: why") with --all.
    entries = r.store.list(
        rule=r.args.get("rule"),
        pid=r.args.get("pid"),
        since=r.args.get("since"),
        include_failed=bool(r.args.get("all")),
    )
    return [e.to_dict(context=False) for e in entries]


def _rm(r: Request) -> Reply:
    store = r.store
    log.info("ctl: uid %d removes core %d", r.peer.uid, r.args["id"])
    return store.remove(r.args["id"]).to_dict(context=False)


HANDLERS: dict[str, Callable[[Request], Reply]] = {
    "list-cores": _list_cores,
    "info": lambda r: r.store.get(r.args["id"]).to_dict(),
    "status": lambda r: r.handler.status(),
    "rules": lambda r: r.handler.rules(bool(r.args.get("matches"))),
    "rm": _rm,
    "snap": lambda r: r.handler.snap(r.args["pid"], r.args.get("content"), r.peer.uid),
    "pause": lambda r: r.handler.pause(r.args.get("reason", ""), r.peer.uid),
    "resume": lambda r: r.handler.resume(r.peer.uid),
    "reload": lambda r: r.handler.reload(r.peer.uid),
}
assert HANDLERS.keys() == COMMANDS.keys(), "every command has exactly one handler"


def dispatch(cmd: str, request: Request) -> Reply:
    return HANDLERS[cmd](request)
