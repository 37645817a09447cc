"""The daemon SIGKILLed at the worst moment of a fork snapshot: its dumper inside the clone()
injected into the target's thread (the thread holding the dumper's registers). The target
must come out whole (it answers, with its own values), no snapshot child may remain, and the
next daemon waits for the orphaned dumper before it goes on. And the dumper itself killed
while its snapshot child lives: the child's zombie is reaped at the dumper's next start."""

from __future__ import annotations

import os
import selectors
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cores import check_bigmem_core
from support.daemon import DaemonHarness
from support.proc import halted_why
from support.victims import Victim
from support.waiting import MIN_WAIT_S, wait_for

pytestmark = pytest.mark.kernel

MIB = 256  # a clone of 256 MiB takes ~10 ms under mmap_write_lock: big enough to matter


def answer(v: Victim, cmd: bytes = b"c", timeout: float = MIN_WAIT_S) -> str:
    """tests/victims/bigmem.c: 'c' prints its counter (a read() of stdin, then a write)."""
    assert v.proc.stdin is not None and v.proc.stdout is not None
    v.proc.stdin.write(cmd)
    v.proc.stdin.flush()
    with selectors.DefaultSelector() as sel:
        sel.register(v.proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), f"bigmem {v.pid} did not answer ({halted_why(v.pid)})"
    return v.proc.stdout.readline().decode().strip()


def children_of(pid: int) -> list[tuple[int, str, int]]:
    """(pid, state, exit signal) of every child of ``pid``, zombies included."""
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        for kid in Path(f"/proc/{pid}/task/{t}/children").read_text().split():
            try:
                f = Path(f"/proc/{kid}/stat").read_bytes()
            except FileNotFoundError:
                continue
            fields = f[f.rindex(b")") + 2 :].split()
            out.append((int(kid), fields[0].decode(), int(fields[35])))
    return out


@pytest.fixture
def hold(workdir: Path) -> Iterator[Path]:
    d = workdir / "hold"
    d.mkdir()
    yield d
    (d / "release").touch()  # whatever happened, never leave a dumper waiting


def rule(pid: int) -> str:
    return (
        f"name: fk\ntarget:\n  pid: {pid}\ntrigger:\n  syscall: write\n"
        "action:\n  snapshot: fork\nlimits:\n  max_cores: 10\n  min_interval: 1ms\n"
    )


def start_holding(daemon: DaemonHarness, where: str, hold: Path) -> None:
    os.environ["SNAPD_TEST_HOLD"] = f"{where}:{hold}"
    try:
        daemon.start()
    finally:
        del os.environ["SNAPD_TEST_HOLD"]


def test_daemon_sigkill_inside_the_injected_clone_leaves_the_target_whole(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path], hold: Path
) -> None:
    v = spawn([compile_victim("bigmem"), MIB, MIB])
    buf = int(v.ready_line.split()[1], 16)
    daemon.write_rule("fk.yaml", rule(v.pid))
    start_holding(daemon, "clone", hold)
    dumper = daemon.status()["dumper"]
    before = int(answer(v))  # its write(2) fires the rule; the dump starts
    wait_for(lambda: (hold / "held").exists(), 30, "the dumper to be inside the injected clone")
    assert halted_why(v.pid), "the target is not held while its thread is in our clone"
    daemon.kill9()  # the daemon dies; the thread holds the dumper's registers
    (hold / "release").touch()
    wait_for(lambda: not Path(f"/proc/{dumper}").exists(), 60, "the orphaned dumper to finish and exit")
    wait_for(lambda: halted_why(v.pid) is None, 10, "the target to run")
    after = int(answer(v))  # its read(2) returned what it read, not our clone's pid
    assert after >= before and v.alive()
    assert children_of(v.pid) == [], children_of(v.pid)  # no snapshot child, not even a zombie
    daemon.start()  # the lock is free; the pending entry of the interrupted core is failed
    cores = daemon.cores()
    assert [c["status"].startswith("failed") for c in cores] == [True], cores
    answer(v)  # fires again: a whole core this time
    (core,) = wait_for(lambda: daemon.complete("fk"), 60, "a core after the restart")
    check_bigmem_core(core["path"], buf, MIB)
    wait_for(daemon.idle, 30, "the daemon to be idle")
    assert children_of(v.pid) == []


def test_a_restarted_daemon_waits_for_its_orphaned_dumper(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path], hold: Path
) -> None:
    v = spawn([compile_victim("bigmem"), 32, 32])
    daemon.write_rule("fk.yaml", rule(v.pid))
    start_holding(daemon, "copy", hold)
    answer(v)
    wait_for(lambda: (hold / "held").exists(), 30, "the dumper to copy")
    daemon.kill9()
    daemon.start(wait=False)
    wait_for(lambda: "is finishing a dump; waiting up to" in daemon.log_text(), 30, "the new daemon to wait")
    (hold / "release").touch()
    daemon.wait_ready()
    assert "the previous dumper finished; going on" in daemon.log_text()
    assert halted_why(v.pid) is None and children_of(v.pid) == []
    answer(v)


def test_a_killed_dumpers_snapshot_child_is_reaped_by_the_next(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path], hold: Path
) -> None:
    """The dumper itself SIGKILLed while its snapshot child lives: the child dies with it
    (PTRACE_O_EXITKILL) but stays a zombie of the target; the daemon starts a new dumper,
    which has the target reap it."""
    v = spawn([compile_victim("bigmem"), 32, 32])
    daemon.write_rule("fk.yaml", rule(v.pid))
    start_holding(daemon, "copy", hold)
    answer(v)
    wait_for(lambda: (hold / "held").exists(), 30, "the dumper to copy from the child")
    (child,) = [k for k, _, sig in children_of(v.pid) if sig == 0]
    dumper = daemon.status()["dumper"]
    os.kill(dumper, signal.SIGKILL)
    wait_for(lambda: daemon.status()["dumper"] not in (None, dumper), 30, "a new dumper")
    wait_for(lambda: children_of(v.pid) == [], 30, f"the zombie of {child} to be reaped")
    (entry,) = daemon.cores()
    assert entry["status"].startswith("failed") and "dumper process died" in entry["status"], entry
    assert "reaped 1 snapshot child(ren) a killed dumper left as zombies" in daemon.log_text()
    answer(v)
