"""Deprecated: moved to support.ctl; import from there. This re-export keeps tests written
against the old name working until the lead removes it."""

from __future__ import annotations

from support.ctl import DaemonLikeHandler, Served, take

__all__ = ["DaemonLikeHandler", "Served", "take"]
