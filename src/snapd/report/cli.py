"""``snapd inspect CORE --stacks``: the report of any core file (snapd's, the kernel's, gdb's)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from snapd.report.model import ReportLimits
from snapd.report.render import render_text
from snapd.report.run import run_report
from snapd.text import safe


def show_stacks(
    path: str,
    as_json: bool,
    exe: Sequence[str] = (),
    firing_tid: int | None = None,
    deadline: float = 30.0,
) -> int:
    """Print the report of ``path``; 1 if it could not be computed (the reason is printed).

    An operator waits for it: the worker runs at normal priority (the daemon's at the lowest)."""
    limits = ReportLimits(deadline=deadline, nice=0, idle_io=False)
    rep = run_report(path, firing_tid=firing_tid, limits=limits, search=exe)
    if as_json:
        print(json.dumps(rep))
    else:
        print(f"{safe(path)}:")
        print(render_text(rep))
    if rep.get("error"):
        print(f"snapd inspect: {safe(path)}: report failed: {safe(rep['error'])}", file=sys.stderr)
        return 1
    return 0
