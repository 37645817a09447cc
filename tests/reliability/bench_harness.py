"""Used by bench/storm.py and bench/soak.py: the tests' daemon harness and victims, outside
pytest (build a victim, run the real daemon on temp dirs, clean up by pid)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "daemon"), str(ROOT / "tests")]

from daemon_helpers import DaemonHarness  # noqa: E402
from tests.conftest import VICTIMS, Victim  # noqa: E402


def build(name: str, out_dir: Path) -> Path:
    exe = out_dir / name
    subprocess.run(["gcc", "-g", "-O0", "-pthread", "-o", str(exe), str(VICTIMS / f"{name}.c")], check=True)
    return exe


@contextlib.contextmanager
def daemon_and_victims() -> Iterator[tuple[DaemonHarness, Path, list[Victim]]]:
    """(harness, build dir, started victims); the daemon is stopped and the victims killed on exit."""
    work = Path(tempfile.mkdtemp(prefix="snapd-bench-", dir="/tmp"))
    os.chmod(work, 0o755)
    rules = work / "rules.d"
    rules.mkdir()
    snapd = shutil.which("snapd", path=str(Path(sys.executable).parent))
    cmd = [snapd] if snapd else [sys.executable, "-m", "snapd"]
    h = DaemonHarness(cmd, rules, work / "state", str(work / "ctl.sock"), work)
    started: list[Victim] = []
    try:
        yield h, work, started
    finally:
        h.stop()
        for v in reversed(started):
            v.kill()
        shutil.rmtree(work, ignore_errors=True)
