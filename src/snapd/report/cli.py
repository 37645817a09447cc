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
    search: Sequence[str] = (),
    firing_tid: int | None = None,
    deadline: float = 30.0,
    *,
    shown: str | None = None,
    exe: str | None = None,
) -> int:
    """Print the report of ``path``; 1 if it could not be computed (the reason is printed).
    ``search``: files and directories holding the binaries; ``exe``: the executable, when it is
    not at the path the core names; ``shown``: the name the user gave (``path`` may be a
    temporary file unpacked from a compressed core or a bundle).

    An operator waits for it: the worker runs at normal priority (the daemon's at the lowest)."""
    limits = ReportLimits(deadline=deadline, nice=0, idle_io=False)
    rep = run_report(path, firing_tid=firing_tid, exe=exe, limits=limits, search=search)
    name = safe(shown if shown is not None else path)
    if as_json:
        print(json.dumps(rep))
    else:
        print(f"{name}:")
        print(render_text(rep))
    if rep.get("error"):
        print(f"snapd inspect: {name}: report failed: {safe(rep['error'])}", file=sys.stderr)
        return 1
    return 0
