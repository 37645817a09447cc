"""The ship tests' victim: tests/victims/ship_victim.c, built again to change its build-id."""

from __future__ import annotations

from pathlib import Path

from support.victims import VICTIMS, build_victim, victim_name

VICTIM = VICTIMS / "ship_victim.c"


def build(out: Path, tag: str = "one") -> Path:
    """Compile tests/victims/ship_victim.c to ``out``; another ``tag`` gives another build-id."""
    return build_victim(VICTIM, f'-DTAG="{tag}"', out=out)


def build_in(directory: Path, tag: str = "one") -> Path:
    """:func:`build` into ``directory``, under the session's name of the victim (the same for
    every ``tag``: a rebuild replaces the program, as an upgrade does)."""
    return build(directory / victim_name(VICTIM), tag)
