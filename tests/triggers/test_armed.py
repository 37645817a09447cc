"""The tick-then-syscall prototype (tests/triggers/bpf/armed_proto.bpf.c): a cpu-clock tick arms
the rule, the first read/write/clock_nanosleep of a target after it takes the tick (one thread
per process, by compare-and-swap) and, for stop: kernel, halts the target inside that syscall,
where a core is taken (the blog's gcore.d as one rule)."""

from __future__ import annotations

import ctypes as ct
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from snapd.core import write_core
from snapd.freeze import halt
from snapd.report import run_report
from snapd.rules import syscalls as sysnames
from support.proc import in_syscall, proc_state
from support.triggers import Ring, build, set_struct, until
from support.victims import Victim

pytestmark = pytest.mark.kernel
SYSCALLS = ("read", "write", "clock_nanosleep")
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK = 1, 0
EXAMPLE = Path(__file__).resolve().parents[2] / "rules" / "example-seed-gcore-d.yaml"


class ARec(ct.Structure):
    _fields_ = [
        ("ts", ct.c_uint64),
        ("armed", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("nr", ct.c_int32),
        ("stop_rc", ct.c_int32),
    ]


@pytest.fixture(scope="module")
def proto() -> Iterator[tuple[Any, Ring]]:
    b = build("armed_proto")
    for name in SYSCALLS:
        b.attach_tracepoint(tp=f"syscalls:sys_enter_{name}".encode(), fn_name=b"proto_sys_enter")
    yield b, Ring(b, "arecs", ARec)
    b.cleanup()


class Armed:
    def __init__(self, proto: tuple[Any, Ring], v: Victim, stop: bool, gen: int) -> None:
        self.bpf, self.ring = proto
        self.ring.take()
        set_struct(self.bpf, "cfgmap", 0, v.pid.to_bytes(4, "little") + int(stop).to_bytes(4, "little"))
        set_struct(self.bpf, "armed", 0, (gen << 32).to_bytes(8, "little"))  # loaded, unarmed
        set_struct(self.bpf, "ticks", 0, bytes(8))
        self.ticking = False

    def tick(self, period_ns: int) -> None:
        self.bpf.attach_perf_event(
            ev_type=PERF_TYPE_SOFTWARE,
            ev_config=PERF_COUNT_SW_CPU_CLOCK,
            fn_name=b"proto_tick",
            sample_period=period_ns,
            cpu=0,
        )
        self.ticking = True

    def stop_ticking(self) -> None:
        if self.ticking:
            self.bpf.detach_perf_event(ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK)
            self.ticking = False

    def ticks(self) -> int:
        return int(self.bpf[b"ticks"][ct.c_int(0)].value)

    def close(self) -> None:
        self.stop_ticking()
        set_struct(self.bpf, "cfgmap", 0, bytes(8))
        set_struct(self.bpf, "armed", 0, bytes(8))


@pytest.fixture
def armed(proto: tuple[Any, Ring]) -> Iterator[Callable[..., Armed]]:
    made: list[Armed] = []
    gen = [0]

    def make(v: Victim, stop: bool) -> Armed:
        gen[0] += 1
        a = Armed(proto, v, stop, gen[0])
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def test_each_tick_taken_once_per_process(
    armed: Callable[..., Armed], compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    """Three threads in clock_nanosleep loops (3000 syscalls/s): one firing per tick, never two."""
    v = spawn([compile_victim("trg_tick"), "3"])
    a = armed(v, stop=False)
    a.tick(200_000_000)
    until(lambda: a.ticks() >= 5, "five ticks")
    a.stop_ticking()
    ticks = a.ticks()
    recs = a.ring.drain(0.3)
    epochs = [r.armed & 0xFFFFFFFF for r in recs]
    assert 1 <= len(recs) <= ticks and len(set(epochs)) == len(epochs), (ticks, epochs)
    assert epochs == sorted(epochs) and {r.pid for r in recs} == {v.pid}
    assert {r.nr for r in recs} == {sysnames.numbers()["clock_nanosleep"]}


def test_unarmed_rule_never_fires(
    armed: Callable[..., Armed], compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    v = spawn([compile_victim("trg_tick"), "2"])
    a = armed(v, stop=True)
    assert a.ring.drain(0.5) == [] and proc_state(v.pid) != "T"


def test_tick_then_syscall_stops_inside_it(
    armed: Callable[..., Armed],
    compile_victim: Callable[..., Path],
    spawn: Callable[..., Victim],
    tmp_path: Path,
) -> None:
    v = spawn([compile_victim("trg_tick"), "2"])
    a = armed(v, stop=True)
    a.tick(300_000_000)
    (r,) = a.ring.wait(1, what="the first syscall after a tick")
    a.stop_ticking()
    assert r.stop_rc == 0 and r.pid == v.pid
    until(lambda: proc_state(v.pid) == "T", "the target's stop")
    nr = sysnames.numbers()["clock_nanosleep"]
    # caught inside the syscall: /proc/PID/task/TID/syscall names it (proc(5))
    assert in_syscall(v.pid, r.tid, nr)
    assert len(a.ring.drain(0.3)) == 1  # stopped: no second firing
    h = halt(v.pid)
    os.kill(v.pid, signal.SIGCONT)
    core = tmp_path / "core.tick"
    write_core(v.pid, str(core), halted=h)
    until(lambda: proc_state(v.pid) in ("S", "R"), "the target running again")
    rep = run_report(str(core), firing_tid=r.tid)
    assert rep["error"] is None, rep["error"]
    t = next(t for t in rep["threads"] if t["tid"] == r.tid)
    names = [f["function"] for f in t["frames"] if f["function"]]
    assert "loop" in names and any("nanosleep" in n for n in names), names


def test_example_rule_is_the_blog_script_and_inert() -> None:
    """rules/example-seed-gcore-d.yaml: the blog's script as one rule, which the loader accepts."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    assert doc["trigger"]["every"] == "10s"
    assert doc["trigger"]["then"] == {"syscall": ["read", "write", "clock_nanosleep"]}
    assert doc["action"]["stop"] == "kernel"
    assert not os.path.exists(doc["target"]["exe"])  # inert: no such program here
