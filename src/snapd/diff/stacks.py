"""Threads whose top frames moved between two cores, from their stack reports.

A report is the JSON the morning report stores per core (issue 11):
``{"threads": [{"tid": N, "frames": [{"pc", "function", "module", ...}], ...}], ...}``. A
thread "changed" when its innermost ``depth`` frames differ by function name (by module and
offset, or pc, where a frame has no name). Reports are derived from the target's memory: every
field is checked for its type, and a report that is not of this shape counts as absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Innermost frames compared: a thread parked in the same wait but called from elsewhere moved.
TOP_FRAMES = 3


def _frame_key(frame: object) -> str:
    if not isinstance(frame, dict):
        return "?"
    fn = frame.get("function")
    if isinstance(fn, str) and fn:
        return fn
    module, offset, pc = frame.get("module"), frame.get("offset"), frame.get("pc")
    if isinstance(module, str) and isinstance(offset, int):
        return f"{module}+{offset:#x}"
    return f"{pc:#x}" if isinstance(pc, int) else "?"


def top_frames(
    report: Mapping[str, Any] | None, depth: int = TOP_FRAMES
) -> dict[int, tuple[str, ...]] | None:
    """tid -> its innermost ``depth`` frame keys; None when ``report`` is not a report."""
    if not isinstance(report, Mapping) or not isinstance(report.get("threads"), list):
        return None
    out: dict[int, tuple[str, ...]] = {}
    for t in report["threads"]:
        if not isinstance(t, dict) or not isinstance(t.get("tid"), int):
            continue
        frames = t.get("frames")
        frames = frames[:depth] if isinstance(frames, list) else []
        out.setdefault(t["tid"], tuple(_frame_key(f) for f in frames))
    return out


def changed_threads(
    report_a: Mapping[str, Any] | None, report_b: Mapping[str, Any] | None, depth: int = TOP_FRAMES
) -> list[int] | None:
    """Threads in both reports whose top frames differ; None unless both are reports."""
    a, b = top_frames(report_a, depth), top_frames(report_b, depth)
    if a is None or b is None:
        return None
    return sorted(tid for tid in a.keys() & b.keys() if a[tid] != b[tid])
