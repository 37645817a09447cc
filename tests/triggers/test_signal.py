"""The signal trigger's prototype (tests/triggers/bpf/signal_proto.bpf.c): what signal_generate
and signal_deliver see on this kernel, and a SIGTERM'd process with a graceful-shutdown handler
halted before the handler runs, its core taken there, then let go to shut down cleanly."""

from __future__ import annotations

import ctypes as ct
import os
import resource
import select
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapd.core import write_core
from snapd.freeze import halt
from snapd.report import run_report
from support.proc import proc_state
from support.triggers import Ring, build, set_struct, until
from support.victims import Victim

pytestmark = pytest.mark.kernel
GENERATE, DELIVER = 1, 2
DISP_DEFAULT, DISP_IGNORE, DISP_HANDLER = 0, 1, 2
TRACE_SIGNAL_DELIVERED, TRACE_SIGNAL_IGNORED = 0, 1


class SRec(ct.Structure):
    _fields_ = [
        ("ts", ct.c_uint64),
        ("kind", ct.c_uint32),
        ("sig", ct.c_uint32),
        ("result", ct.c_int32),
        ("code", ct.c_int32),
        ("cur_pid", ct.c_uint32),
        ("cur_tid", ct.c_uint32),
        ("target", ct.c_uint32),
        ("disp", ct.c_uint32),
        ("sa_handler", ct.c_uint64),
        ("stop_rc", ct.c_int32),
        ("sender", ct.c_uint32),
        ("comm", ct.c_char * 16),
    ]


@pytest.fixture(scope="module")
def proto() -> Iterator[tuple[Any, Ring]]:
    b = build("signal_proto")  # its TRACEPOINT_PROBEs attach when built
    yield b, Ring(b, "srecs", SRec)
    b.cleanup()


class Sig:
    def __init__(self, proto: tuple[Any, Ring], v: Victim, sigs: tuple[int, ...], stop: int) -> None:
        self.bpf, self.ring = proto
        self.v = v
        self.ring.take()
        mask = sum(1 << (s - 1) for s in sigs)
        set_struct(
            self.bpf,
            "cfgmap",
            0,
            v.pid.to_bytes(4, "little") + stop.to_bytes(4, "little") + mask.to_bytes(8, "little"),
        )

    def records(self, n: int) -> list[SRec]:
        self.ring.wait(n, what=f"{n} signal records")
        return self.ring.drain(0.2)

    def close(self) -> None:
        set_struct(self.bpf, "cfgmap", 0, bytes(16))


@pytest.fixture
def sig(
    proto: tuple[Any, Ring], compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> Iterator[Callable[..., Sig]]:
    made: list[Sig] = []

    def make(mode: str, sigs: tuple[int, ...], stop: int = 1) -> Sig:
        no_core = lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # noqa: E731
        v = spawn([compile_victim("trg_sig"), mode], preexec_fn=no_core)
        s = Sig(proto, v, sigs, stop)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def handler_addr(v: Victim) -> int:
    return int(v.ready_line.split("handler=")[1], 16)


def output(v: Victim, timeout: float = 0.0) -> bytes:
    assert v.proc.stdout is not None
    fd = v.proc.stdout.fileno()
    if not select.select([fd], [], [], timeout)[0]:
        return b""
    return os.read(fd, 4096)


def test_sigterm_halted_before_its_handler(sig: Callable[..., Sig], tmp_path: Path) -> None:
    s = sig("handler", (signal.SIGTERM,))
    v = s.v
    os.kill(v.pid, signal.SIGTERM)
    recs = s.records(2)
    gen, dlv = recs[0], recs[1]
    assert (gen.kind, gen.sig, gen.result, gen.cur_pid, gen.target) == (
        GENERATE,
        signal.SIGTERM,
        TRACE_SIGNAL_DELIVERED,
        os.getpid(),
        v.pid,
    )
    assert (dlv.kind, dlv.sig, dlv.disp, dlv.cur_pid) == (DELIVER, signal.SIGTERM, DISP_HANDLER, v.pid)
    assert dlv.sa_handler == handler_addr(v) and dlv.stop_rc == 0
    assert dlv.sender == os.getpid()  # the delivery names who sent it
    until(lambda: proc_state(v.pid) == "T", "the target's job-control stop")
    assert output(v) == b""  # no instruction of the handler has run
    # the daemon's stop: kernel path: take over with ptrace, lift the stop, dump, resume
    h = halt(v.pid)
    os.kill(v.pid, signal.SIGCONT)
    core = tmp_path / "core.sigterm"
    write_core(v.pid, str(core), halted=h)
    assert output(v, 30.0) == b"graceful 15\n"
    assert v.proc.wait(timeout=30) == 0  # it shut down as it meant to
    rep = run_report(str(core), firing_tid=v.pid)
    assert rep["error"] is None, rep["error"]
    frames = rep["threads"][0]["frames"]
    names = [f["function"] for f in frames]
    assert names[0] == "trg_on_term" and frames[0]["pc"] == handler_addr(v), names
    assert "main" in names  # through the signal frame to the code it interrupted


def test_default_fatal_sigterm_is_already_a_group_exit(sig: Callable[..., Sig]) -> None:
    s = sig("default", (signal.SIGTERM,))
    os.kill(s.v.pid, signal.SIGTERM)
    recs = s.records(2)
    assert [(r.kind, r.sig) for r in recs] == [(GENERATE, signal.SIGTERM), (DELIVER, signal.SIGKILL)]
    assert recs[1].disp == DISP_DEFAULT and recs[1].stop_rc == 1  # nothing to stop before
    assert s.v.proc.wait(timeout=30) == -signal.SIGTERM


def test_sigstop_at_a_fatal_delivery_does_not_stop_it(sig: Callable[..., Sig]) -> None:
    """SIGABRT's default action dumps core: it is delivered as itself (complete_signal leaves
    core-dumping signals to get_signal), and a SIGSTOP queued then changes nothing."""
    s = sig("default", (signal.SIGABRT,), stop=2)
    os.kill(s.v.pid, signal.SIGABRT)
    recs = s.records(2)
    assert [(r.kind, r.sig) for r in recs] == [(GENERATE, signal.SIGABRT), (DELIVER, signal.SIGABRT)]
    assert recs[1].disp == DISP_DEFAULT and recs[1].stop_rc == 0  # queued, and ignored
    assert s.v.proc.wait(timeout=30) == -signal.SIGABRT


def test_ignored_signal_is_never_delivered(sig: Callable[..., Sig]) -> None:
    s = sig("ignore", (signal.SIGTERM,))
    os.kill(s.v.pid, signal.SIGTERM)
    recs = s.records(1)
    assert [(r.kind, r.sig, r.result) for r in recs] == [(GENERATE, signal.SIGTERM, TRACE_SIGNAL_IGNORED)]
    assert s.v.proc.poll() is None and proc_state(s.v.pid) == "S"


def test_sigkill_is_seen_not_stopped(sig: Callable[..., Sig]) -> None:
    s = sig("handler", (signal.SIGKILL,))
    os.kill(s.v.pid, signal.SIGKILL)
    recs = s.records(1)
    assert (recs[0].kind, recs[0].sig, recs[0].cur_pid) == (GENERATE, signal.SIGKILL, os.getpid())
    assert s.v.proc.wait(timeout=30) == -signal.SIGKILL
    # the dying target may still pass get_signal (deliver, as SIGKILL): never a stop
    assert all(r.stop_rc == 1 for r in s.ring.drain(0.2))
