"""`snapd inspect` of a core cut short says so (a dump or copy interrupted half-way)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from snapd.core import write_core

pytestmark = pytest.mark.kernel


def inspect(snapd_cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*snapd_cmd, "inspect", *args], capture_output=True, text=True, timeout=60)


def test_a_truncated_core_is_said_to_be_truncated(spawn, snapd_cmd, tmp_path: Path) -> None:
    v = spawn(["sh", "-c", "echo ready; exec sleep 600"])
    whole = tmp_path / "core"
    write_core(v.pid, str(whole))
    cut = tmp_path / "cut"
    cut.write_bytes(whole.read_bytes()[: 64 << 10])

    r = inspect(snapd_cmd, str(whole))
    assert r.returncode == 0 and "warning:" not in r.stdout, r.stdout + r.stderr
    r = inspect(snapd_cmd, str(cut))
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stdout.splitlines() if "warning:" in ln]
    assert len(warn) == 1 and "truncated: the file ends at 64.0 KiB but its segments need" in warn[0], (
        r.stdout
    )
    d = json.loads(inspect(snapd_cmd, "--json", str(cut)).stdout)
    assert d["cut_segments"] > 0 and d["needed_size"] == whole.stat().st_size
