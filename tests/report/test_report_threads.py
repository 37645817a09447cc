"""The report of real cores of the threads victim: every function gdb shows, text and JSON."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from snapd import procfs
from snapd.report import ReportLimits, render_text, run_report, where
from support.gdb import gdb_backtraces
from support.proc import context_of, in_syscall
from support.report import dump, functions, thread_of
from support.waiting import scaled, wait_for

pytestmark = pytest.mark.kernel


def parked(pid: int) -> None:
    """The victim prints "ready" before its main thread reaches read(2) in main_wait."""
    wait_for(lambda: in_syscall(pid, pid, 0), what="main thread in read(2)")


@pytest.fixture
def threads_core(compile_victim, spawn, tmp_path):
    exe = compile_victim("threads")
    v = spawn([exe])
    parked(v.pid)
    core = dump(v.pid, tmp_path / "core.threads")
    return exe, v, core


def test_every_function_gdb_shows_is_in_the_report(threads_core):
    exe, v, core = threads_core
    tids = procfs.tids(v.pid)
    firing = tids[2]
    rep = run_report(str(core), firing_tid=firing, context=context_of(v.pid))
    assert rep["error"] is None, rep["error"]
    assert next(t["tid"] for t in rep["threads"]) == firing
    assert sorted(t["tid"] for t in rep["threads"]) == tids
    assert [t["tid"] for t in rep["threads"] if t["firing"]] == [firing]
    assert rep["threads_total"] == 4 and not rep["truncated"]
    gdb = gdb_backtraces(exe, core)
    assert sorted(gdb) == tids
    ours = {"worker_alpha", "worker_beta", "worker_gamma", "main_wait", "park", "main", "start"}
    text = render_text(rep)
    for tid, names in gdb.items():
        mine = functions(thread_of(rep, tid))
        for name in set(names) & ours:
            assert name in mine, (tid, name, mine)
        assert set(names) & ours, names
        assert f"Stack trace of thread {tid} ({exe.name})" in text
    assert f"Stack trace of thread {firing} ({exe.name}) [fired the rule]:" in text.splitlines()[0]
    # JSON: the shape of the issue, with pc/offset as integers and file:line from -g
    frame = next(f for f in thread_of(rep, tids[0])["frames"] if f["function"] == "main_wait")
    assert set(frame) >= {"pc", "function", "module", "offset", "file", "line"}
    assert frame["module"] == str(exe) and frame["file"].endswith("threads.c") and frame["line"] > 0
    assert frame["pc"] - frame["offset"] == next(m["start"] for m in rep["modules"] if m["path"] == str(exe))
    assert all(m["build_id"] for m in rep["modules"])
    assert any("libc.so" in m["path"] for m in rep["modules"])
    assert "user nobody" in rep["sandbox"] and "no_new_privs" in rep["sandbox"]
    # the main thread was in read(2), called by main_wait
    assert where({**rep, "threads": [t for t in rep["threads"] if not t["firing"]]}) == "main_wait"
    assert where(rep) == "park"


def test_inspect_stacks_text_and_json(threads_core, snapd_cmd):
    exe, v, core = threads_core
    r = subprocess.run(
        [*snapd_cmd, "inspect", str(core), "--stacks"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    for name in ("worker_alpha", "worker_beta", "worker_gamma", "main_wait"):
        assert f" {name} ({exe.name} + 0x" in r.stdout, r.stdout
    assert f"Stack trace of thread {v.pid} ({exe.name})" in r.stdout
    assert "Module " + str(exe) + " with build-id " in r.stdout
    r = subprocess.run(
        [*snapd_cmd, "inspect", str(core), "--stacks", "--json", "--tid", str(v.pid)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["threads"][0]["tid"] == v.pid and rep["threads"][0]["firing"]
    assert {"threads", "modules", "truncated", "error"} <= set(rep)


def test_limits_truncate_explicitly(threads_core):
    _exe, v, core = threads_core
    rep = run_report(str(core), limits=ReportLimits(max_threads=2, max_frames=2))
    assert rep["error"] is None and rep["truncated"]
    assert len(rep["threads"]) == 2 and rep["threads_total"] == 4
    assert rep["threads"][0]["tid"] == v.pid  # the core's first thread when none fired
    assert all(len(t["frames"]) <= 2 and t["truncated"] for t in rep["threads"])
    text = render_text(rep)
    assert "more frames not shown" in text and "2 more thread(s) not shown (2 of 4)" in text


def test_stripped_binary_gives_module_and_offset(compile_victim, spawn, tmp_path):
    exe = compile_victim("threads", "-s")
    v = spawn([exe])
    parked(v.pid)
    core = dump(v.pid, tmp_path / "core.stripped")
    rep = run_report(str(core))
    assert rep["error"] is None, rep["error"]
    assert len(rep["threads"]) == 4
    for t in rep["threads"]:
        mine = [f for f in t["frames"] if f["module"] == str(exe)]
        assert mine, t
        assert all(f["offset"] is not None and 0 < f["offset"] < 1 << 20 for f in mine)
        assert not {"worker_alpha", "park", "main_wait"} & set(functions(t))
    assert f"({exe.name} + 0x" in render_text(rep)


def test_start_report_polls_without_blocking(threads_core):
    import selectors

    from snapd.report import start_report

    _exe, v, core = threads_core
    job = start_report(str(core), firing_tid=v.pid)
    sel = selectors.DefaultSelector()
    sel.register(job.fileno(), selectors.EVENT_READ)
    rep = job.step(0)
    deadline = time.monotonic() + scaled(60)
    while rep is None and time.monotonic() < deadline:
        sel.select(1.0)
        rep = job.step(0)
    sel.close()
    assert rep is not None and rep["error"] is None and rep["threads"][0]["tid"] == v.pid
    assert job.fileno() == -1 and job.step(0) is rep
    assert where(rep) == "main_wait"
