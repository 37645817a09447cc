"""Hostile targets: tests/victims/sec_hostile.c under a name the test chooses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from support.daemon import DVictim
from support.victims import Victim

NOBODY = 65534


class Hostile:
    """hostile(comm) starts tests/victims/sec_hostile.c renamed to ``comm`` (a DVictim)."""

    def __init__(self, spawn: Callable[..., Victim], compile_victim: Callable[..., Path]) -> None:
        self.spawn = spawn
        self.compile_victim = compile_victim
        self.started: list[DVictim] = []

    def __call__(self, comm: str, *, exe: Path | None = None, prefix: tuple[str, ...] = ()) -> DVictim:
        exe = exe or self.compile_victim("sec_hostile")
        v = DVictim(self.spawn([*prefix, str(exe), comm]), exe)
        self.started.append(v)
        return v
