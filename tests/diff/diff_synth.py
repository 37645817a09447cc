"""Deprecated: moved to support.synthcore; import from there. This re-export keeps tests written
against the old name working until the lead removes it."""

from __future__ import annotations

from support.synthcore import EXE, PAGE, SLoad, page, standard, write_core

__all__ = ["EXE", "PAGE", "SLoad", "page", "standard", "write_core"]
