"""Deprecated: moved to support.statedir, support.cores, support.proc and support.rng; import
from there. This re-export keeps tests written against the old name working until the lead
removes it."""

from __future__ import annotations

from support.cores import check_bigmem_core, elf_segments, read_core_at
from support.proc import CLK_TCK, Usage
from support.rng import seeded_rng
from support.statedir import PARTIAL, check_listing, complete_cores, integrity, partials, pending_rows

__all__ = [
    "CLK_TCK",
    "PARTIAL",
    "Usage",
    "check_bigmem_core",
    "check_listing",
    "complete_cores",
    "elf_segments",
    "integrity",
    "partials",
    "pending_rows",
    "read_core_at",
    "seeded_rng",
]
