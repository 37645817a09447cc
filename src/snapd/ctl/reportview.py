"""What ``snapd ctl`` prints of a core's report, and of ``ctl diff`` / ``ctl series``.

The report is rendered here, from the JSON the daemon stored (:func:`snapd.report.render_text`,
every string through :func:`snapd.text.safe`). A diff or a series arrives as text the daemon's
worker rendered (escaped there); :func:`printable` makes sure anyway that no character of it can
drive the terminal, since the worker read hostile memory.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from snapd.report import render_text
from snapd.text import safe

MAX_WHERE = 40


def where_cell(c: Mapping[str, Any]) -> str:
    """list-cores' WHERE: the report's where, ``(pending)`` until it is done, ``-`` without."""
    status = str(c.get("report_status") or "none")
    if status in ("queued", "running"):
        return "(pending)"
    where = safe(c.get("where") or "-")
    return where if len(where) <= MAX_WHERE else where[: MAX_WHERE - 1] + "…"


def _when(t: object) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    d = _dt.datetime.fromtimestamp(float(t), _dt.timezone.utc)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def report_lines(e: Mapping[str, Any]) -> list[str]:
    """After what ``info`` prints today: the report's state, then its stack traces."""
    status = str(e.get("report_status") or "none")
    if status == "none":
        return ["", "       Report: none (the core was taken before reports, or with reports off)"]
    lines = ["", f"       Report: {safe(status)}"]
    if status in ("queued", "running"):
        lines[-1] += " (ask again in a moment)"
        return lines
    started, ended = e.get("report_started"), e.get("report_ended")
    if isinstance(started, (int, float)) and isinstance(ended, (int, float)):
        lines.append(f"               started {_when(started)}, took {ended - started:.2f} s")
    rep = e.get("report")
    if status == "complete" and isinstance(rep, Mapping):
        lines.append(f"        Where: {safe(e.get('where') or '-')}")
        lines.append("")
        lines += render_text(rep).splitlines()
    return lines


def printable(text: str) -> str:
    """``text`` with every character that could drive a terminal escaped (lines kept)."""
    return "\n".join(
        "".join(ch if ch.isprintable() else safe(ch) for ch in line) for line in str(text).split("\n")
    )


def diff_text(result: Mapping[str, Any]) -> str:
    a, b = result.get("a") or {}, result.get("b") or {}
    head = f"diff of core {safe(a.get('id', '?'))} and core {safe(b.get('id', '?'))}"
    return head + "\n" + printable(str(result.get("text", "")))


def series_text(result: Mapping[str, Any]) -> str:
    ids = ", ".join(safe(i) for i in result.get("ids") or [])
    kind = result.get("kind")
    what = "of one firing (a repeat series)" if kind == "firing" else "of one rule and pid over time"
    return f"series: cores {ids}, {what}\n" + printable(str(result.get("text", "")))


def without_text(result: Any) -> Any:
    """The JSON of a diff or series reply, without the rendered text."""
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if k != "text"}
    return result
