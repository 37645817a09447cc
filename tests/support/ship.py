"""The ship tests' victim: tests/victims/ship_victim.c, built again to change its build-id."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.paths import VICTIMS

VICTIM = VICTIMS / "ship_victim.c"


def build(out: Path, tag: str = "one") -> Path:
    """Compile tests/victims/ship_victim.c to ``out``; another ``tag`` gives another build-id."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", "-g", "-O0", "-pthread", "-fno-omit-frame-pointer", f'-DTAG="{tag}"']
    subprocess.run([*cmd, "-o", str(out), str(VICTIM)], check=True)
    return out
