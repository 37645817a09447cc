"""Reports in tests: a core taken for one, and the frames a report holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from snapd.core import write_core


def dump(pid: int, path: Path, **kw: Any) -> Path:
    write_core(pid, str(path), **kw)
    return path


def functions(thread: dict[str, Any]) -> list[str]:
    return [f["function"] for f in thread["frames"] if f["function"]]


def thread_of(report: dict[str, Any], tid: int) -> dict[str, Any]:
    return next(t for t in report["threads"] if t["tid"] == tid)
