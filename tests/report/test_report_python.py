"""A CPython victim: each thread's Python frames match the script, and the GIL holder."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapd.report import render_text, run_report, where
from support.proc import context_of, in_syscall
from support.report import dump, thread_of
from support.waiting import wait_for

pytestmark = pytest.mark.kernel

SCRIPT = Path(__file__).parent.parent / "victims" / "rpt_pyparked.py"
PYTHON = "/usr/bin/python3"


def line_of(marker: str) -> int:
    lines = SCRIPT.read_text().splitlines()
    return next(i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(f"# PARK {marker}"))


def test_python_frames_match_the_script(spawn, tmp_path):
    v = spawn([PYTHON, SCRIPT])
    main_tid, *workers = map(int, v.ready_line.split()[1:])
    assert main_tid == v.pid and len(workers) == 3
    # printing "ready" released the GIL for the write(2): wait until main holds it in pause(2)
    wait_for(lambda: in_syscall(v.pid, main_tid, 34), what="main thread in pause(2)")
    core = dump(v.pid, tmp_path / "core.py")
    rep = run_report(str(core), firing_tid=workers[0], context=context_of(v.pid))
    assert rep["error"] is None, rep["error"]
    assert rep["python_version"] and rep["python_version"].startswith("3.")
    assert rep["gil"] == main_tid
    script = str(SCRIPT)

    main = thread_of(rep, main_tid)
    assert main["gil"] and not any(t["gil"] for t in rep["threads"] if t["tid"] != main_tid)
    assert main["python"][0] == {"function": "rpt_hold_gil", "file": script, "line": line_of("gil")}
    assert [p["function"] for p in main["python"]][-2:] == ["main", "<module>"]

    seen = []
    for tid in workers:
        py = thread_of(rep, tid)["python"]
        top, middle = py[0], py[1]
        assert top["file"] == script and middle["file"] == script, py
        assert middle == {"function": "rpt_middle", "file": script, "line": line_of("middle")}
        seen.append(top["function"])
        assert top["line"] == line_of("alpha" if top["function"] == "rpt_park_alpha" else "beta")
        assert py[-1]["function"] == "_bootstrap"
    assert sorted(seen) == ["rpt_park_alpha", "rpt_park_beta", "rpt_park_beta"]

    assert rep["threads"][0]["tid"] == workers[0] and rep["threads"][0]["firing"]
    text = render_text(rep)
    assert "Python stack, innermost first (holds the GIL):" in text
    assert f"    rpt_hold_gil ({script}:{line_of('gil')})" in text
    assert where(rep).startswith(("rpt_park_alpha (rpt_pyparked.py:", "rpt_park_beta (rpt_pyparked.py:"))
    # native frames of the same threads: the interpreter's own
    assert any("python3" in (f["module"] or "") for f in main["frames"])
