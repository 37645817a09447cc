"""``snapd ctl``: the daemon's control socket (server) and its command-line client."""

from __future__ import annotations

from snapd.ctl.protocol import DEFAULT_GROUP, MAX_REQUEST, Access, CtlError
from snapd.ctl.server import CtlHandler, CtlServer, Peer, ensure_group
from snapd.paths import DEFAULT_SOCKET

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_SOCKET",
    "MAX_REQUEST",
    "Access",
    "CtlError",
    "CtlHandler",
    "CtlServer",
    "Peer",
    "ensure_group",
]
