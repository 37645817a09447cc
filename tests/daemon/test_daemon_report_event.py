"""The stack a probe records at the event reaches the report: Event.stack -> CoreRequest.event ->
the catalog's report request -> the report's "at the event" frames. The probe side (registers
and stack recorded in BPF) is not there yet: here ptrace records them, as the probe will."""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.content import SnapshotMode, parse_spec
from snapd.core import write_core
from snapd.daemon.reports import Reports, ReportSettings
from snapd.daemon.request import CoreRequest, event_stack
from snapd.probe import Event, Kind, UserStack
from snapd.procfs.context import capture
from snapd.report import EventStack, ReportLimits
from snapd.store import Catalog, Retention
from support.proc import in_syscall
from support.report import record_event
from support.victims import Victim
from support.waiting import scaled, wait_for


def event(stack: UserStack | None, tid: int = 7) -> Event:
    return Event(
        rule="r", pid=5, tid=tid, comm="x", kind=Kind.SYSCALL, time_ns=1, syscall="read", stack=stack
    )


def test_event_stack_from_the_probe_record() -> None:
    regs, stack = bytes(27 * 8), b"\x01" * 64
    es = event_stack(event(UserStack(regs, stack)))
    assert es == EventStack(7, regs, stack)
    assert event_stack(event(None)) is None
    assert event_stack(event(UserStack(b"short", stack))) is None  # malformed: dropped, logged


class Loop:
    """The daemon's FdWatch, as a test drives it."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()

    def watch_fd(self, fd: int, ready: Callable[[], None]) -> None:
        self.sel.register(fd, selectors.EVENT_READ, ready)

    def unwatch_fd(self, fd: int) -> None:
        self.sel.unregister(fd)

    def turn(self, clients: list[Reports], timeout: float = 0.05) -> None:
        for key, _ in self.sel.select(timeout):
            key.data()
        for c in clients:
            c.tick(time.monotonic())


@pytest.mark.kernel
def test_at_the_event_frames_through_the_reports_queue(
    compile_victim: Callable[..., Path], spawn: Callable[..., Victim], tmp_path: Path
) -> None:
    v = spawn([compile_victim("rpt_event")])
    tid = int(v.ready_line.split()[1])
    wait_for(lambda: in_syscall(v.pid, tid, 0), what="worker in read(2)")
    at = record_event(v.pid, tid)  # in rpt_first_function
    stack = UserStack(at.regs, at.stack)
    v.write(b"x")
    assert v.proc.stdout is not None and v.proc.stdout.readline() == b"second\n"
    wait_for(lambda: in_syscall(v.pid, tid, 34), what="worker in pause(2)")
    ev = Event(rule="ev", pid=v.pid, tid=tid, comm="rpt_event", kind=Kind.SYSCALL, time_ns=1, stack=stack)
    req = CoreRequest(
        rule="ev",
        pid=v.pid,
        tid=tid,
        trigger={"kind": "syscall", "tid": tid},
        content=parse_spec("default"),
        mode=SnapshotMode.FROZEN,
        template="core.{rule}.{pid}.{seq}",
        event=event_stack(ev),
    )
    assert req.event is not None and req.repeated().event is None
    with Catalog(tmp_path / "state", Retention(max_use=None, keep_free=None)) as cat:
        e = cat.reserve(rule="ev", pid=v.pid, trigger=req.trigger, context=capture(v.pid))
        entry = cat.publish(e.id, write_core(v.pid, e.path, current_tid=tid))
        loop = Loop()
        reports = Reports(cat, ReportSettings(limits=ReportLimits(deadline=scaled(60))), loop, lambda: True)
        reports.published(entry, req)
        row = cat.reports.get(entry.id)
        assert row is not None and row.request["event"]["tid"] == tid and row.request["firing_tid"] == tid
        deadline = time.monotonic() + scaled(90)
        while reports.queue or reports.running:
            assert time.monotonic() < deadline, "the report did not end"
            loop.turn([reports])
        row = cat.reports.get(entry.id)
        assert row is not None and row.status == "complete", row.status
        assert row.report is not None
        t = row.report["threads"][0]
        assert t["tid"] == tid and t["firing"]
        at = t["at_event"]
        assert at is not None and at["error"] is None, at
        names = [f["function"] for f in at["frames"] if f["function"]]
        assert "rpt_first_function" in names and "rpt_second_function" not in names
        assert "rpt_second_function" in [f["function"] for f in t["frames"]]
        assert row.started is not None and row.started >= entry.info["started"] + entry.info["freeze_seconds"]
        assert not loop.sel.get_map()  # every pipe unwatched
