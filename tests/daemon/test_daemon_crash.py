"""Crash safety: the daemon killed with SIGKILL at random moments of a dump never leaves its
target halted, and the next start lists only complete cores and removes every partial file."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import DaemonHarness, NamedVictims, Victims, syscall_rule
from support.gdb import gdb_bt
from support.proc import halted_why
from support.statedir import partials
from support.victims import Victim
from support.waiting import MIN_WAIT_S, scaled, wait_for

pytestmark = pytest.mark.kernel

KILLS = 4


def poll_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    """wait_for with a steady 1 ms period, to catch the start of a short dump."""
    timeout = scaled(max(timeout, MIN_WAIT_S))
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.001)


def test_sigkill_during_dumps_never_leaves_victim_halted(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims(touch_mib=1024)  # a few hundred MiB, so that a dump takes a while
    seed = int(os.environ.get("SNAPD_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    daemon.write_rule("big.yaml", syscall_rule("big", v.pid))
    kernel_rule = syscall_rule("bigk", v.pid, "write", when="errno == EPIPE", action="  stop: kernel\n")
    daemon.write_rule("bigk.yaml", kernel_rule)
    # Retention off: the 1 GiB cores of the dumps no kill lands in would reach the default
    # MaxUse (4G) and remove the first core, which this test keeps to the end.
    daemon.start("--max-use", "100%", "--keep-free", "0")
    cores_dir = daemon.state / "cores"

    # One whole dump first: how long a dump takes here, and a complete core to keep.
    v.cmd("g 1")
    (first,) = wait_for(lambda: daemon.complete("big"), 120, "a first complete core")
    span = float(first["dump_seconds"])
    assert span > 0.05, first  # else the kills below could not land inside a dump

    killed_in_dump = 0
    for i in range(KILLS):
        if daemon.proc is None:
            daemon.start()
        kernel = i % 2 == 1  # alternate stop: ptrace and stop: kernel
        v.send("e 1" if kernel else "g 1")
        # The dump has started once the writer's temp file exists (polled every ms: `ctl status`
        # costs a process start, which is most of a dump here).
        poll_until(lambda: partials(cores_dir), 30, f"kill {i}: a dump to start")
        time.sleep(rng.uniform(0, span))  # a random moment of the dump (seed printed on failure)
        killed_in_dump += bool(partials(cores_dir))
        daemon.kill9()
        if kernel:
            # A target the probe stopped is resumed at the next start from the journal, at
            # the latest; the worker usually resumed it already.
            daemon.start()
        why = halted_why(v.pid)
        wait_for(lambda: halted_why(v.pid) is None, 5, f"seed {seed} kill {i}: victim to run ({why})")
        v.reply()  # the "done" of the command that fired
        v.cmd("p")
    assert killed_in_dump >= 1, f"seed {seed}: no kill landed while a partial file existed"

    if daemon.proc is None:
        daemon.start()
    wait_for(daemon.idle, 60, "the daemon to be idle")
    assert not partials(cores_dir), os.listdir(cores_dir)
    cores = daemon.cores()
    assert first["id"] in [c["id"] for c in cores]
    on_disk = set(os.listdir(cores_dir))
    for c in cores:
        name = os.path.basename(c["path"])
        if c["status"] == "complete":
            assert name in on_disk, c
            assert os.stat(c["path"]).st_size == int(c["size"]) or int(c["size"]) > 0
        else:
            # An interrupted dump is listed as failed, never as a core: its file is gone.
            assert c["status"].startswith("failed"), c
            assert name not in on_disk, c
    assert on_disk <= {os.path.basename(c["path"]) for c in cores if c["status"] == "complete"}
    # By default list-cores lists cores only: interrupted attempts appear with --all alone.
    r = daemon.ctl("list-cores", "--json", check=False)
    listed = json.loads(r.stdout)
    assert [c["id"] for c in listed] == [c["id"] for c in cores if c["status"] == "complete"]
    assert " main (" in gdb_bt(v.exe, first["path"])
    v.cmd("p")


def test_stop_kernel_target_stopped_before_the_daemon_read_the_event(
    daemon: DaemonHarness, victims: Victims
) -> None:
    """The probe stops the target in the kernel; if the daemon dies before reading that event
    (here: frozen with SIGSTOP, then SIGKILLed), the next start still resumes the target."""
    v = victims()
    daemon.write_rule("k.yaml", syscall_rule("k", v.pid, action="  stop: kernel\n"))
    daemon.start()
    os.kill(daemon.pid, signal.SIGSTOP)  # the event will sit unread in the ring buffer
    v.send("g 1")
    wait_for(lambda: halted_why(v.pid), 10, "the probe to stop the victim")
    daemon.kill9()
    daemon.start()
    why = halted_why(v.pid)
    wait_for(lambda: halted_why(v.pid) is None, 5, f"the restarted daemon to resume the victim ({why})")
    v.reply()
    v.cmd("p")
    assert f"resumed pid {v.pid}, left stopped by a previous daemon's stop: kernel probe" in daemon.log_text()


def test_crash_recovery_resumes_exactly_what_the_probe_stopped(
    daemon: DaemonHarness, spawn: Callable[..., Victim], victim_exe: Path
) -> None:
    """After a crash, the next start resumes the process the probe stopped, and not another
    process of the same rule's target that an operator stopped on purpose (kill -STOP): the
    kernel recorded which process it stopped (a pinned map), nothing is guessed from /proc."""
    named = NamedVictims(spawn, victim_exe)
    a, b = named("trust-exact"), named("trust-exact")  # both match the rule; only a fires
    rule = f"name: k\ntarget:\n  comm: {a.comm}\ntrigger:\n  syscall: getppid\naction:\n  stop: kernel\n"
    daemon.write_rule("k.yaml", rule + "limits:\n  max_cores: 100\n  min_interval: 1ms\n")
    daemon.start()
    os.kill(b.pid, signal.SIGSTOP)  # the operator's
    try:
        os.kill(daemon.pid, signal.SIGSTOP)  # the event will sit unread in the ring buffer
        a.send("g 1")
        wait_for(lambda: halted_why(a.pid), 10, "the probe to stop victim a")
        daemon.kill9()
        daemon.start()
        why = halted_why(a.pid)
        wait_for(lambda: halted_why(a.pid) is None, 5, f"the restarted daemon to resume a ({why})")
        assert halted_why(b.pid) == f"thread {b.pid} in state T", "the operator's stop was lifted"
        assert f"resumed pid {b.pid}" not in daemon.log_text()
    finally:
        os.kill(b.pid, signal.SIGCONT)
    a.reply()
    a.cmd("p")
    b.cmd("p")
    named.close()


def test_recovery_never_resumes_a_recycled_pid(tmp_path: Path) -> None:
    """The pinned record says when the probe stopped a pid; a process holding that pid now
    that started later is another process (the pid was recycled) and stays as it is."""
    import subprocess

    from snapd.daemon.journal import StopJournal
    from snapd.probe import Probes, pinned

    proc = subprocess.Popen(["sleep", "600"])
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: halted_why(proc.pid), 10, "sleep to stop")
        pin_dir = pinned.pin_dir_for(str(tmp_path))
        p = Probes(pin_dir=pin_dir)
        p.compile()
        stopped = p._bpf[b"stopped"]  # as the probe writes it: pid -> CLOCK_BOOTTIME of the stop
        start_ns = int(Path(f"/proc/{proc.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
        start_ns *= pinned.NS_PER_TICK
        stopped[stopped.Key(proc.pid)] = stopped.Leaf(start_ns - 10 * pinned.NS_PER_TICK)  # before it began
        p.close(keep_pin=True)  # as a SIGKILLed daemon leaves it
        assert StopJournal(str(tmp_path), Probes(pin_dir=pin_dir)).recover() == []
        assert halted_why(proc.pid) == f"thread {proc.pid} in state T"
        assert not os.path.exists(os.path.join(pin_dir, pinned.STOPPED))
    finally:
        proc.kill()
        proc.wait()


def test_clean_restart_leaves_a_deliberately_stopped_process_alone(
    daemon: DaemonHarness, victims: Victims
) -> None:
    v = victims()
    daemon.write_rule("k.yaml", syscall_rule("k", v.pid, action="  stop: kernel\n"))
    daemon.start()
    os.kill(v.pid, signal.SIGSTOP)  # an operator's kill -STOP, nothing to do with snapd
    try:
        daemon.stop()
        daemon.start()
        st = daemon.status()
        assert st["rules"] == 1
        assert halted_why(v.pid) == f"thread {v.pid} in state T"
    finally:
        os.kill(v.pid, signal.SIGCONT)
    v.cmd("p")
