"""The stack "at the event": registers and stack bytes recorded while the thread was in its first
function, unwound after it moved on, beside the snapshot that shows where it went."""

from __future__ import annotations

import os

import pytest

from snapd.report import EventStack, render_text, run_report
from support.proc import in_syscall
from support.report import dump, functions, record_event, thread_of
from support.waiting import wait_for

pytestmark = pytest.mark.kernel


def test_at_the_event_shows_the_first_function(compile_victim, spawn, tmp_path):
    exe = compile_victim("rpt_event")
    v = spawn([exe])
    tid = int(v.ready_line.split()[1])
    wait_for(lambda: in_syscall(v.pid, tid, 0), what="worker in read(2)")
    event = record_event(v.pid, tid)
    assert v.proc.stdin is not None
    v.proc.stdin.write(b"x")
    v.proc.stdin.flush()
    assert v.proc.stdout is not None
    assert v.proc.stdout.readline() == b"second\n"
    wait_for(lambda: in_syscall(v.pid, tid, 34), what="worker in pause(2)")
    core = dump(v.pid, tmp_path / "core.event")

    rep = run_report(str(core), firing_tid=tid, event=event)
    assert rep["error"] is None, rep["error"]
    t = thread_of(rep, tid)
    assert t["firing"] and rep["threads"][0]["tid"] == tid
    at = t["at_event"]
    assert at is not None and at["error"] is None, at
    assert "rpt_first_function" in functions(at) and "worker" in functions(at)
    assert "rpt_second_function" not in functions(at)
    assert "rpt_second_function" in functions(t) and "rpt_first_function" not in functions(t)
    assert at["frames"][0]["pc"] == event.pc
    text = render_text(rep)
    head = text.split("  at the snapshot:")[0]
    assert "  at the event:" in head and f" rpt_first_function ({exe.name} + 0x" in head
    # the other threads have no event
    assert all(x["at_event"] is None for x in rep["threads"] if x["tid"] != tid)


def test_event_stack_cut_short_is_truncated_not_wrong(compile_victim, spawn, tmp_path):
    v = spawn([compile_victim("rpt_event")])
    tid = int(v.ready_line.split()[1])
    wait_for(lambda: in_syscall(v.pid, tid, 0), what="worker in read(2)")
    full = record_event(v.pid, tid)
    core = dump(v.pid, tmp_path / "core.short")
    short = EventStack(full.tid, full.regs, full.stack[:64])
    rep = run_report(str(core), firing_tid=tid, event=short)
    at = thread_of(rep, tid)["at_event"]
    assert rep["error"] is None and at is not None
    # whatever it found is a prefix of the full unwind, and it says the copy ended
    full_rep = run_report(str(core), firing_tid=tid, event=full)
    whole = [f["pc"] for f in thread_of(full_rep, tid)["at_event"]["frames"]]
    got = [f["pc"] for f in at["frames"]]
    assert got == whole[: len(got)] and len(got) < len(whole)
    assert at["truncated"] or at["error"]


def test_event_of_a_thread_missing_from_the_core(compile_victim, spawn, tmp_path):
    v = spawn([compile_victim("rpt_event")])
    tid = int(v.ready_line.split()[1])
    wait_for(lambda: in_syscall(v.pid, tid, 0), what="worker in read(2)")
    ev = record_event(v.pid, tid)
    core = dump(v.pid, tmp_path / "core.gone")
    ghost = EventStack(os.getpid() + 10**6, ev.regs, ev.stack)  # no such thread in the core
    rep = run_report(str(core), firing_tid=ghost.tid, event=ghost)
    assert rep["error"] is None
    first = rep["threads"][0]
    assert first["tid"] == ghost.tid and first["firing"] and "not in the core" in first["error"]
    assert "rpt_first_function" in functions(first["at_event"])
