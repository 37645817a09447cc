"""Helpers for tests/security (importable by name, like tests/ctl/ctl_helpers.py).

The helpers of tests/daemon and tests/ctl are imported, not copied: their directories are put
on sys.path here, as pytest does for the tests that live in them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
for d in (HERE.parent / "daemon", HERE.parent / "ctl"):
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))

from daemon_helpers import DVictim  # noqa: E402
from tests.conftest import Victim  # noqa: E402

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


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")
