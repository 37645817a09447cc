"""What `snapd ctl info` and `list-cores` show of a core's report, in every state of its life,
from the catalog's reports table (the daemon fills it; here the test does)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from snapd.ctl.reportview import printable, where_cell
from support.ctl import Served, take

Run = Callable[..., subprocess.CompletedProcess[str]]


def frame(pc: int, fn: str | None, module: str, offset: int, **kw: Any) -> dict[str, Any]:
    return {
        "pc": pc,
        "function": fn,
        "module": module,
        "offset": offset,
        "file": None,
        "line": None,
        "inline": False,
        **kw,
    }


def thread(tid: int, name: str, frames: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    base = {
        "tid": tid,
        "name": name,
        "state": "S",
        "firing": False,
        "gil": False,
        "frames": frames,
        "python": [],
        "at_event": None,
        "truncated": False,
        "error": None,
    }
    return {**base, **kw}


EXE = "/usr/bin/victim"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
REPORT = {
    "threads": [
        thread(
            102,
            "worker",
            [frame(0x7F0000001000, "epoll_wait", LIBC, 0x1000), frame(0x555500002000, "serve", EXE, 0x2000)],
            firing=True,
        ),
        thread(
            100,
            "victim",
            [frame(0x7F0000003000, "__libc_pause", LIBC, 0x3000), frame(0x555500004000, None, EXE, 0x4000)],
            python=[{"function": "handler", "file": "/srv/app.py", "line": 12}],
            gil=True,
        ),
        thread(101, "evil\x1b]0;pwned\x07", [frame(0x555500005000, "f\x1b[2Jg", EXE, 0x5000)]),
    ],
    "modules": [
        {"path": EXE, "build_id": "ab" * 20, "package": None, "start": 0x555500000000, "end": 0x555500010000},
        {
            "path": LIBC,
            "build_id": None,
            "package": {"type": "deb", "name": "libc6", "version": "2.36", "architecture": "amd64"},
            "start": 0,
            "end": 1,
        },
    ],
    "truncated": False,
    "error": None,
    "pid": 100,
    "comm": "victim",
    "threads_total": 3,
    "warnings": [],
}


def test_info_prints_the_report_after_what_it_printed(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    e = take(s.catalog)
    s.catalog.reports.queue(e.id, request={"firing_tid": 102}, now=100.0)
    s.catalog.reports.start(e.id, now=101.0)
    s.catalog.reports.finish(e.id, REPORT, "serve", now=101.75)
    r = ctl(s.path, "info", str(e.id))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    lines = text.splitlines()
    assert text.index("         Dump: ") < text.index("       Report: complete")
    assert "               started 1970-01-01T00:01:41.000Z, took 0.75 s" in lines
    assert "        Where: serve" in lines
    blocks = [x for x in lines if x.startswith("Stack trace of thread ")]
    assert blocks == [
        "Stack trace of thread 102 (worker) [fired the rule]:",
        "Stack trace of thread 100 (victim):",
        "Stack trace of thread 101 (evil\\x1b]0;pwned\\x07):",
    ]
    assert "#0  0x00007f0000001000 epoll_wait (libc.so.6 + 0x1000)" in lines
    assert "#1  0x0000555500004000 n/a (victim + 0x4000)" in lines  # no symbol: module + offset
    assert "#0  0x0000555500005000 f\\x1b[2Jg (victim + 0x5000)" in lines
    i = lines.index("Python stack, innermost first (holds the GIL):")
    assert lines[i + 1] == "    handler (/srv/app.py:12)"
    assert lines.index("Stack trace of thread 100 (victim):") < i < lines.index(blocks[2])
    assert f"Module {EXE} with build-id {'ab' * 20}" in lines
    assert f"Module {LIBC} from deb libc6 2.36 (amd64), no build-id" in lines
    assert "\x1b" not in text

    d = json.loads(ctl(s.path, "info", str(e.id), "--json").stdout)
    assert d["report"] == REPORT
    assert (d["report_status"], d["where"]) == ("complete", "serve")
    assert (d["report_queued"], d["report_started"], d["report_ended"]) == (100.0, 101.0, 101.75)


def test_list_cores_where_in_every_state(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    done, failed, queued, running, none = (take(s.catalog, pid=10 + i) for i in range(5))
    for e in (done, failed, queued, running):
        s.catalog.reports.queue(e.id)
    s.catalog.reports.finish(done.id, REPORT, "serve")
    s.catalog.reports.fail(failed.id, "timed out after 30 s (killed)")
    s.catalog.reports.start(running.id)
    cores = {c["id"]: c for c in json.loads(ctl(s.path, "list-cores", "--json").stdout)}
    states = {i: (c["report_status"], c["where"]) for i, c in cores.items()}
    assert states == {
        done.id: ("complete", "serve"),
        failed.id: ("failed: timed out after 30 s (killed)", "-"),
        queued.id: ("queued", ""),
        running.id: ("running", ""),
        none.id: ("none", ""),
    }
    assert "report" not in cores[done.id]  # list-cores carries no reports
    table = ctl(s.path, "list-cores").stdout.splitlines()
    assert table[0].split()[8] == "WHERE"
    where = {int(x.split()[0]): x.split()[9] for x in table[1:]}
    assert where == {
        done.id: "serve",
        failed.id: "-",
        queued.id: "(pending)",
        running.id: "(pending)",
        none.id: "-",
    }


def test_info_of_a_report_not_done_or_failed(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    failed, queued, none = take(s.catalog), take(s.catalog), take(s.catalog)
    s.catalog.reports.queue(failed.id)
    s.catalog.reports.queue(queued.id)
    s.catalog.reports.finish(failed.id, {"error": "the worker crashed (SIGSEGV)", "threads": []}, "-")
    out = {e.id: ctl(s.path, "info", str(e.id)).stdout for e in (failed, queued, none)}
    assert "       Report: failed: the worker crashed (SIGSEGV)" in out[failed.id].splitlines()
    assert "Stack trace" not in out[failed.id]
    assert "       Report: queued (ask again in a moment)" in out[queued.id].splitlines()
    assert "       Report: none (the core was taken before reports, or with reports off)" in out[none.id]
    d = json.loads(ctl(s.path, "info", str(none.id), "--json").stdout)
    assert d["report"] is None and d["report_status"] == "none"


def test_text_from_a_worker_cannot_drive_the_terminal() -> None:
    assert printable("a\x1b[2Jb\nc\u202ed\\e") == "a\\x1b[2Jb\nc\\u202ed\\e"
    assert where_cell({"report_status": "complete", "where": "x" * 100}).endswith("…")
    assert len(where_cell({"report_status": "complete", "where": "x" * 100})) == 40
    assert where_cell({"report_status": "complete", "where": "\x1b"}) == "\\x1b"
