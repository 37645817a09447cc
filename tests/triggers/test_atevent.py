"""The "at the event" record (src/snapd/probe/atevent.bpf.c): registers and stack recorded by a
syscall tracepoint and by a uprobe in the firing thread, unwound by snapd.report from a later
snapshot of the same process (issue 11's consumer, on main)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapd.core import write_core
from snapd.probe import symbols, trigger_layout
from snapd.procfs import maps
from snapd.report import MAX_EVENT_STACK, EventStack, run_report
from support.triggers import UProto, command, set_struct
from support.victims import Victim

pytestmark = pytest.mark.kernel
RIP, RSP = 16, 19
AT_F_REGS, AT_F_CUT, AT_F_HOLE = 1, 2, 4


@pytest.fixture(scope="module")
def proto() -> Iterator[UProto]:
    p = UProto()
    yield p
    p.close()


@pytest.fixture
def up(proto: UProto) -> Iterator[UProto]:
    proto.ring.take()
    yield proto
    for link in proto.links:
        link.close()
    proto.links = []


def functions(part: dict[str, Any]) -> list[str]:
    return [f["function"] for f in part["frames"] if f["function"]]


def report_of(v: Victim, f: Any, tmp: Path) -> dict[str, Any]:
    core = tmp / "core.atevent"
    write_core(v.pid, str(core))
    ev = EventStack(f.tid, f.regs_bytes(), f.stack_bytes())
    rep = run_report(str(core), firing_tid=f.tid, event=ev)
    assert rep["error"] is None, rep["error"]
    return next(t for t in rep["threads"] if t["tid"] == f.tid)


def test_layout_matches_the_report() -> None:
    assert trigger_layout.EVENT_STACK == MAX_EVENT_STACK
    assert trigger_layout.USER_REGS * 8 == 216


def test_syscall_event_unwinds_to_the_caller(
    up: UProto, compile_victim: Callable[..., Path], spawn: Callable[..., Victim], tmp_path: Path
) -> None:
    v = spawn([compile_victim("trg_victim")])
    # pred[0]: the prototype's syscall program records every openat of this process
    set_struct(up.bpf, "preds", 0, v.pid.to_bytes(4, "little") + (255).to_bytes(4, "little") + bytes(16))
    up.bpf.attach_tracepoint(tp=b"syscalls:sys_enter_openat", fn_name=b"proto_sys_enter")
    try:
        tid, ret, _ = command(v, "f")  # trg_syscall_fn -> syscall(SYS_openat, ...)
        assert ret == -1
        (f,) = up.ring.wait(1, what="the openat event")
    finally:
        up.bpf.detach_tracepoint(tp=b"syscalls:sys_enter_openat")
    assert (f.kind, f.tid, f.at.flags & AT_F_REGS) == (3, tid, AT_F_REGS)
    sp = f.at.regs[RSP]
    stack_vma = next(m for m in maps(v.pid) if m.start <= sp < m.end)
    # a short main-thread stack: what is mapped above sp, page by page, at most 16 KiB; main's
    # 16 KiB of locals hold pages never touched (not present), read as the zeros they are
    assert f.at.stack_len == min(MAX_EVENT_STACK, stack_vma.end - sp)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    assert f.at.flags & AT_F_HOLE or "[always]" in thp  # THP may back the whole stack
    # the victim is now back in main's fgets: the snapshot says main/read, the event says
    # trg_syscall_fn
    t = report_of(v, f, tmp_path)
    at = t["at_event"]
    assert at is not None and at["error"] is None, at
    assert "trg_syscall_fn" in functions(at) and "main" in functions(at)
    assert "trg_syscall_fn" not in functions(t)
    assert at["frames"][0]["pc"] == f.at.regs[RIP]


def test_uprobe_event_is_at_the_function(
    up: UProto, compile_victim: Callable[..., Path], spawn: Callable[..., Victim], tmp_path: Path
) -> None:
    v = spawn([compile_victim("trg_victim")])
    exe = symbols.resolve_binary(str(compile_victim("trg_victim")), v.pid)
    site = symbols.function_site(exe, "trg_marker")
    idx = up.site(tgid=v.pid, at_event=True)
    up.attach(idx, exe.path, site.offset, pid=v.pid)
    command(v, "c 3")
    (f,) = up.ring.wait(1, what="trg_marker's entry")
    assert exe.start is not None and f.at.regs[RIP] == exe.start + site.vaddr
    t = report_of(v, f, tmp_path)
    names = functions(t["at_event"])
    assert names[:2] == ["trg_marker", "main"], names
