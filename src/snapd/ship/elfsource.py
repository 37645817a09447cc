"""Where a bundle writer finds the ELF files a core maps: places that can prove, by build-id,
that a file is the one the process ran.

A source answers ``lookup(path, build_id) -> (local path or None, why not)``. ``build_id`` is
what the core says (None when the core holds no ELF header page for the file, so nothing can be
proven). :class:`HostFiles` looks at the file on this host; :class:`snapd.ship.elfcache.ElfCache`
at the copies kept when the core was taken; :class:`Chain` asks each in turn.
"""

from __future__ import annotations

import os
from typing import Protocol

from snapd.ship.elfid import file_build_id

NOT_HERE = "not on this host"


class ElfSource(Protocol):
    def lookup(self, path: str, build_id: str | None) -> tuple[str | None, str]: ...


class HostFiles:
    """The file at its original path on this host, if its build-id is the core's.

    ``unverified``: also accept a file when the core holds no build-id for it (the bundle's
    manifest then marks it unverified)."""

    def __init__(self, *, unverified: bool = False) -> None:
        self.unverified = unverified

    def lookup(self, path: str, build_id: str | None) -> tuple[str | None, str]:
        if not os.path.isfile(path):
            return None, NOT_HERE
        if build_id is None:
            if self.unverified:
                return path, ""
            return None, "the core holds no build-id for it (content without ELF headers)"
        found = file_build_id(path)
        if found != build_id:
            return None, f"the file on disk has build-id {found or 'none'}: replaced since (an upgrade?)"
        return path, ""


class Chain:
    def __init__(self, *sources: ElfSource) -> None:
        self.sources = sources

    def lookup(self, path: str, build_id: str | None) -> tuple[str | None, str]:
        why = "no source"
        for s in self.sources:
            found, why_not = s.lookup(path, build_id)
            if found:
                return found, ""
            why = why_not or why
        return None, why
