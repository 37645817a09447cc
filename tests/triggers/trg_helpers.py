"""Deprecated: moved to support.triggers; import from there. This re-export keeps tests written
against the old name working until the lead removes it."""

from __future__ import annotations

from support.triggers import (
    BPF_DIR,
    FIELD_NONE,
    AtEvent,
    Fire,
    Ring,
    UProto,
    build,
    command,
    hexs,
    marker_addr,
    proto_flags,
    set_struct,
    until,
)

__all__ = [
    "BPF_DIR",
    "FIELD_NONE",
    "AtEvent",
    "Fire",
    "Ring",
    "UProto",
    "build",
    "command",
    "hexs",
    "marker_addr",
    "proto_flags",
    "set_struct",
    "until",
]
