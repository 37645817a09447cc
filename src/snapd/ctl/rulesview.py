"""``snapd ctl rules`` as a table: one line per rule with its STATE, and with ``--matches`` the
processes each selects (``snapd check --matches`` prints the same table)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from snapd.ctl.table import format_table
from snapd.text import safe

RULE_COLUMNS = ("NAME", "STATE", "TRIGGER", "TARGETS", "CORES", "MAX", "SEEN", "FILE")
MATCH_COLUMNS = ("PID", "COMM", "EXE", "UNIT")


def format_matches(matches: Sequence[dict[str, Any]], indent: str = "  ") -> str:
    if not matches:
        return f"{indent}(no running process)"
    rows = [
        (str(m.get("pid", "")), safe(m.get("comm", "")), safe(m.get("exe", "")), safe(m.get("unit", "")))
        for m in matches
    ]
    return "\n".join(indent + line for line in format_table(rows, MATCH_COLUMNS).splitlines())


def format_rules(rules: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in rules:
        rows.append(
            (
                safe(r.get("name", "-")),
                safe(r.get("state", "")),
                safe(r.get("trigger", "-")),
                str(r.get("targets", "-")),
                str(r.get("cores", "-")),
                str(r.get("max_cores", "-")),
                str(r.get("seen", "-")),
                safe(r.get("path", "")),
            )
        )
    out = [format_table(rows, RULE_COLUMNS)] if rows else ["No rules."]
    for r in rules:
        if "matches" in r:
            n = len(r["matches"])
            out.append(f"\nrule {safe(r.get('name', '?'))} selects {n} process(es) now:")
            out.append(format_matches(r["matches"]))
    return "\n".join(out)
