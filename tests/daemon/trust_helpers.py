"""Victims under names of their own: rules on a comm match every process of that name on the
machine, and other test runs here start daemon_victims too."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from daemon_helpers import DVictim
from tests.conftest import Victim


class NamedVictims:
    """``NamedVictims(spawn, victim_exe)("trust-rss")``: daemon_victim.c run as that comm."""

    def __init__(self, spawn: Callable[..., Victim], exe: Path) -> None:
        self.spawn = spawn
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="snapd-tv-", dir="/tmp"))
        self.dir.chmod(0o755)

    def __call__(self, name: str, touch_mib: int = 0) -> DVictim:
        exe = self.dir / name[:15]
        if not exe.exists():
            shutil.copy(self.exe, exe)
        argv = [str(exe)] + ([str(touch_mib)] if touch_mib else [])
        return DVictim(self.spawn(argv), exe)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
