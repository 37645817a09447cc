"""Deprecated: moved to support.soak; import from there. This re-export keeps code written
against the old name working until the lead removes it."""

from __future__ import annotations

from support.soak import DAEMON_ARGS, WARMUP_S, SoakResult, quiet, rules, run_soak

__all__ = ["DAEMON_ARGS", "WARMUP_S", "SoakResult", "quiet", "rules", "run_soak"]
