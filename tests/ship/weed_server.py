"""Deprecated: moved to support.weed; import from there. This re-export keeps tests written
against the old name working until the lead removes it."""

from __future__ import annotations

from support.weed import BUCKET, KEY, SECRET, Weed, pick_ports, weed_binary, write_credentials

__all__ = ["BUCKET", "KEY", "SECRET", "Weed", "pick_ports", "weed_binary", "write_credentials"]
