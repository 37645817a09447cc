"""Helpers shared by the ship tests (a module with a unique name; see tests/snapd_testlib.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

VICTIM = Path(__file__).parent.parent / "victims" / "ship_victim.c"
GDB_QUIET = ["-nx", "-batch", "-iex", "set debuginfod enabled off"]


def build(out: Path, tag: str = "one") -> Path:
    """Compile tests/victims/ship_victim.c to ``out``; another ``tag`` gives another build-id."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", "-g", "-O0", "-pthread", "-fno-omit-frame-pointer", f'-DTAG="{tag}"']
    subprocess.run([*cmd, "-o", str(out), str(VICTIM)], check=True)
    return out
