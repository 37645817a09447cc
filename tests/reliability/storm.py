"""Deprecated: moved to support.storm; import from there. This re-export keeps code written
against the old name working until the lead removes it."""

from __future__ import annotations

from support.storm import MAX_CORES, StormResult, rule_text, run_storm

__all__ = ["MAX_CORES", "StormResult", "rule_text", "run_storm"]
