"""A rule dropped into the rules directory fires for a real victim; the core is catalogued,
gdb reads it, and the victim runs on. Variants: exit probes, stop: kernel, repeat, every,
snapshot: fork."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from support.daemon import DaemonHarness, Victims, syscall_rule
from support.gdb import gdb_bt
from support.proc import halted_why
from support.waiting import wait_for

pytestmark = pytest.mark.kernel

EPIPE = 32


def check_core(core: dict[str, object], victim_pid: int, comm: str) -> None:
    assert core["status"] == "complete", core
    assert core["pid"] == victim_pid
    assert core["comm"] == comm
    assert int(core["size"]) > 0 and int(core["disk_bytes"]) > 0  # type: ignore[call-overload]


def assert_gdb_reads(exe: object, core: str, frame: str | None = None) -> str:
    bt = gdb_bt(str(exe), core)
    assert "#0 " in bt and " main (" in bt, bt
    assert "not a core dump" not in bt and "not in executable format" not in bt, bt
    if frame:
        assert frame in bt, bt
    return bt


@pytest.mark.lane
def test_syscall_rule_core_read_by_gdb_victim_runs_on(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims()
    daemon.write_rule("entry.yaml", syscall_rule("entry", v.pid, "getppid"))
    daemon.write_rule("exit.yaml", syscall_rule("exit", v.pid, "write", when="errno == EPIPE"))
    daemon.start()
    assert {r["name"] for r in daemon.rules_list()} == {"entry", "exit"}

    v.cmd("g 1")
    (core,) = wait_for(lambda: daemon.complete("entry"), 20, "a core from the getppid rule")
    check_core(core, v.pid, v.comm)
    trig = core["trigger"]
    assert trig["kind"] == "syscall" and trig["syscall"] == "getppid"
    assert trig["args"] == [] and trig["ret"] is None and trig["tid"] == v.pid
    # stop: ptrace halts the victim after the event (asynchronously): it is back in read().
    assert_gdb_reads(v.exe, core["path"])

    v.cmd("e 1")
    (core,) = wait_for(lambda: daemon.complete("exit"), 20, "a core from the EPIPE rule")
    check_core(core, v.pid, v.comm)
    trig = core["trigger"]
    assert trig["syscall"] == "write" and trig["ret"] == -EPIPE
    assert len(trig["args"]) == 3 and trig["args"][2] == 1  # write(fd, buf, 1)
    assert_gdb_reads(v.exe, core["path"])

    # The victim was resumed: not halted, and it answers a later command.
    assert halted_why(v.pid) is None
    v.cmd("p")


@pytest.mark.lane
def test_stop_kernel_core_at_the_syscall_and_released(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims()
    daemon.write_rule("k.yaml", syscall_rule("k", v.pid, "getppid", action="  stop: kernel\n"))
    daemon.start()
    assert daemon.rule("k")["stop"] == "kernel"
    v.cmd("g 1")  # answers only once the daemon has resumed it (SIGCONT)
    (core,) = wait_for(lambda: daemon.complete("k"), 20, "a core from the stop: kernel rule")
    check_core(core, v.pid, v.comm)
    assert core["trigger"]["syscall"] == "getppid"
    # The probe stopped it at the event, so the core shows it in the syscall() wrapper.
    assert_gdb_reads(v.exe, core["path"], frame="syscall")
    assert halted_why(v.pid) is None
    v.cmd("g 1")  # a second firing (min_interval 1ms): stopped again and released again
    wait_for(lambda: len(daemon.complete("k")) == 2, 20, "the second stop: kernel core")
    wait_for(lambda: halted_why(v.pid) is None, 5, "the victim to be released")
    v.cmd("p")


def test_repeat_three_cores_interval_apart(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims()
    action = "  core:\n    repeat: 3\n    interval: 200ms\n"
    daemon.write_rule("rep.yaml", syscall_rule("rep", v.pid, action=action))
    daemon.start()
    v.cmd("g 1")
    cores = wait_for(lambda: len(daemon.complete("rep")) == 3 and daemon.complete("rep"), 20, "3 cores")
    assert isinstance(cores, list)
    times = sorted(float(c["created"]) for c in cores)
    for a, b in itertools.pairwise(times):
        assert b - a >= 0.19, times  # interval: 200ms apart, each stamped with its own time
    for c in cores:
        check_core(c, v.pid, v.comm)
    st = daemon.rule("rep")
    assert st["seen"] == 1  # one firing, three cores
    assert daemon.idle()
    assert len(daemon.complete("rep")) == 3
    v.cmd("p")


def test_every_timer_rule_fires(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims()
    daemon.write_rule(
        "tick.yaml",
        f"name: tick\ntarget:\n  pid: {v.pid}\ntrigger:\n  every: 1s\n"
        "limits:\n  max_cores: 2\n  min_interval: 1ms\n",
    )
    daemon.start()
    cores = wait_for(lambda: len(daemon.complete("tick")) >= 2 and daemon.complete("tick"), 20, "2 ticks")
    assert isinstance(cores, list)
    for c in cores:
        check_core(c, v.pid, v.comm)
        assert c["trigger"]["kind"] == "every"
    # max_cores: 2 holds; further ticks are counted as suppressed.
    wait_for(lambda: daemon.rule("tick")["suppressed"].get("max_cores", 0) >= 1, 10, "a suppressed tick")
    assert daemon.idle()
    assert len(daemon.complete("tick")) == 2
    v.cmd("p")


@pytest.mark.lane
def test_snapshot_fork(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims(touch_mib=8)
    daemon.write_rule("fk.yaml", syscall_rule("fk", v.pid, action="  snapshot: fork\n"))
    daemon.start()
    assert daemon.rule("fk")["snapshot"] == "fork"
    v.cmd("g 1")
    (core,) = wait_for(lambda: daemon.complete("fk"), 20, "a fork-snapshot core")
    check_core(core, v.pid, v.comm)
    assert core["snapshot"] == "fork", core
    assert_gdb_reads(v.exe, core["path"])
    v.cmd("p")


def test_action_run_after_the_core(daemon: DaemonHarness, victims: Victims, workdir: Path) -> None:
    """action.run: an argv (no shell) with {core} {rule} {pid} {comm} filled in; other braces
    are the program's business (a lone '}' is a literal)."""
    v = victims()
    out = workdir / "run.out"
    script = f'printf "%s|%s|%s|%s|}}\\n" "$1" "$2" "$3" "$4" > {out}.tmp && mv {out}.tmp {out}'
    run = json.dumps(["/bin/sh", "-c", script, "sh", "{core}", "{rule}", "{pid}", "{comm}"])
    daemon.write_rule("run.yaml", syscall_rule("run", v.pid, action=f"  run: {run}\n"))
    daemon.start()
    v.cmd("g 1")
    (core,) = wait_for(lambda: daemon.complete("run"), 20, "the core")
    wait_for(out.exists, 20, "action.run to write its output")
    assert out.read_text() == f"{core['path']}|run|{v.pid}|{v.comm}|}}\n"
    # Logged once the daemon has reaped it, which may be after its output is in place.
    wait_for(lambda: "rule run: run /bin/sh: exit 0" in daemon.log_text(), 20, "action.run's exit logged")
    v.cmd("p")


def test_events_keep_flowing_during_a_slow_dump(daemon: DaemonHarness, victims: Victims) -> None:
    """While one big dump runs, another rule's firing is read and counted at once (and its
    core queued), not when the dump is over."""
    big, small = victims(touch_mib=3072), victims()
    daemon.write_rule("big.yaml", syscall_rule("big", big.pid))
    daemon.write_rule("small.yaml", syscall_rule("small", small.pid))
    daemon.start()
    big.cmd("g 1")
    wait_for(lambda: (daemon.status()["dumping"] or {}).get("rule") == "big", 20, "the big dump to start")
    small.cmd("g 1")

    def counted_mid_dump() -> bool:
        st = daemon.status()  # one reply: both counters are from the same moment
        assert (st["dumping"] or {}).get("rule") == "big", f"the big dump ended first: {st}"
        return bool(st["events"] == 2 and st["queued"] == 1)

    wait_for(counted_mid_dump, 30, "the small rule's firing to be counted during the big dump")
    wait_for(lambda: daemon.complete("small") and daemon.complete("big"), 60, "both cores")
    assert daemon.status()["suppressed"] == {}
    big.cmd("p")
    small.cmd("p")
