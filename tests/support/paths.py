"""Where things are in the checkout, and the environment a child Python needs to import
``support`` too."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TESTS = ROOT / "tests"
#: the victims' sources (tests/victims/NAME.c)
VICTIMS = TESTS / "victims"


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with tests/ first on PYTHONPATH, for a child Python
    that imports ``support``."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), out.get("PYTHONPATH", "")) if p)
    return out
