"""Real eBPF, what issue 15 asked of the probe layer: every syscall the kernel can trace loads
under the names users know; arguments read as their declared types; a muted rule costs no
events; a replacement that cannot be armed leaves the old version running; a fork snapshot's
child is never a target."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.probe import Event, Probes
from snapd.probe.layout import MUTE_FOREVER, SNAPSHOT_CLONE_FLAGS
from snapd.rules import RuleError, parse_rule
from snapd.rules import syscalls as sysnames
from snapd.rules.model import SyscallTrigger
from support.probes import drain, rule
from support.victims import Victim
from support.waiting import wait_for

pytestmark = pytest.mark.kernel
Spawn = Callable[..., Victim]

# A Python victim: each line on stdin runs one call, then it answers "done".
SCRIPT = r"""
import os, sys
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "open":      # openat(AT_FDCWD, ...): arg0 is int dfd == -100
        os.close(os.open("/dev/null", os.O_RDONLY))
    elif cmd[0] == "close":   # close(-5): arg0 is unsigned int fd == 4294967291
        try:
            os.close(-5)
        except OSError:
            pass
    elif cmd[0] == "ppid":
        for _ in range(int(cmd[1])):
            os.getppid()
    print("done", flush=True)
"""


@pytest.fixture
def pyvictim(spawn: Spawn) -> Victim:
    return spawn([sys.executable, "-c", SCRIPT])


def ask(v: Victim, line: str) -> None:
    assert v.proc.stdin is not None and v.proc.stdout is not None
    v.proc.stdin.write(line.encode() + b"\n")
    v.proc.stdin.flush()
    assert v.proc.stdout.readline().startswith(b"done")


def test_every_traced_syscall_loads_under_its_users_name(probes: Probes) -> None:
    traced = sysnames.traced_names()
    assert traced, "tracefs is not readable"
    names = sorted({sysnames.lookup(t).name for t in traced})
    for user, tp in (("sendfile", "sendfile64"), ("stat", "newstat"), ("fstat", "newfstat")):
        assert user in names and sysnames.lookup(tp).name == user
    assert {"lstat", "uname", "umount2"} <= set(names)
    text = "target: {comm: trust-no-such}\ntrigger:\n  syscall: [" + ", ".join(names) + "]\n"
    probes.load(rule(text, "all"))
    assert probes.stats()["rules"] == 1
    print(f"\none rule on all {len(names)} syscalls this kernel traces")


def test_arguments_read_as_their_declared_types(probes: Probes, pyvictim: Victim) -> None:
    pid = pyvictim.pid
    probes.load(rule(f"target: {{pid: {pid}}}\ntrigger: {{syscall: openat, when: arg0 == -100}}", "fdcwd"))
    probes.load(rule(f"target: {{pid: {pid}}}\ntrigger: {{syscall: close, when: arg0 == 4294967291}}", "u32"))
    ask(pyvictim, "open")
    ask(pyvictim, "close")
    got = drain(probes)
    fdcwd = [e for e in got if e.rule == "fdcwd"]
    u32 = [e for e in got if e.rule == "u32"]
    assert fdcwd and all(e.args[0] == -100 for e in fdcwd), got
    assert len(u32) == 1 and u32[0].args[0] == 4294967291, got


def test_a_constant_the_argument_cannot_hold_is_an_error() -> None:
    _, errors = parse_rule("target: {comm: x}\ntrigger: {syscall: close, when: arg0 == -5}\n", "c.yaml")
    (err,) = [str(e) for e in errors]
    assert "arg0 of close is 'unsigned int fd', a 32-bit unsigned value" in err, err
    assert "did you mean 4294967291?" in err, err


def test_a_muted_rule_costs_no_events(probes: Probes, pyvictim: Victim) -> None:
    pid = pyvictim.pid
    probes.load(rule(f"target: {{pid: {pid}}}\ntrigger: {{syscall: getppid}}", "m"))
    probes.mute("m", MUTE_FOREVER)
    before = probes.stats()
    ask(pyvictim, "ppid 50")
    assert drain(probes) == []
    after = probes.stats()
    assert after["kernel_muted"] - before["kernel_muted"] == 50
    assert after["kernel_seen"] == before["kernel_seen"] and probes.muted_count("m") == 50
    probes.mute("m", None)
    ask(pyvictim, "ppid 1")
    assert [e.rule for e in drain(probes)] == ["m"]
    probes.mute_process("m", pid, time.monotonic_ns() + 3600 * 10**9)  # min_interval running
    ask(pyvictim, "ppid 3")
    assert drain(probes) == [] and probes.muted_count("m") == 53
    probes.mute_process("m", pid, time.monotonic_ns())  # expired
    ask(pyvictim, "ppid 1")
    assert [e.rule for e in drain(probes)] == ["m"]


def test_a_replacement_that_cannot_be_armed_leaves_the_old_running(probes: Probes, pyvictim: Victim) -> None:
    good = rule(f"target: {{pid: {pyvictim.pid}}}\ntrigger: {{syscall: getppid}}", "r")
    probes.load(good)
    bad = dataclasses.replace(good, trigger=SyscallTrigger(("no_such_call_at_all",)))
    with pytest.raises(RuleError, match="no syscall number known for 'no_such_call_at_all'"):
        probes.load(bad)
    ask(pyvictim, "ppid 1")
    assert [e.rule for e in drain(probes)] == ["r"]


def test_the_clone_signature_is_the_snapshots() -> None:
    from snapd.core.fork import CLONE_ARGS

    assert CLONE_ARGS[0] == SNAPSHOT_CLONE_FLAGS


def _snapshot_children(pid: int) -> list[int]:
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        for kid in Path(f"/proc/{pid}/task/{t}/children").read_text().split():
            data = Path(f"/proc/{kid}/stat").read_bytes()
            if int(data[data.rindex(b")") + 2 :].split()[35]) == 0:  # exit signal 0
                out.append(int(kid))
    return out


def test_a_fork_snapshot_child_is_never_targeted(probes: Probes, spawn: Spawn, compile_victim) -> None:  # type: ignore[no-untyped-def]
    """The child keeps the target's comm, exe and cgroup: the fork probe, the /proc rescans
    and the samplers must all leave it out, while it lives (here: the whole copy)."""
    from snapd.core import write_core

    exe = compile_victim("bigmem")
    v = spawn([exe, 64, 64])
    probes.set_own(os.getpid(), None)  # this test is the tracer, as the dumper is
    probes.load(rule(f"target: {{comm: {exe.name}}}\ntrigger: {{rss: {{above: 16MiB}}}}", "rss"))
    first = wait_for(lambda: [e for e in drain(probes, 0.2) if e.pid == v.pid], 10, "the at-load firing")
    assert first[0].at_load
    seen: dict[str, object] = {}

    def during_copy(done: int, total: int) -> None:
        if seen:
            return
        (child,) = _snapshot_children(v.pid)
        rescans = probes.stats().get("rescans", 0)
        got: list[Event] = []
        wait_for(
            lambda: (got.extend(probes.poll(50)), probes.stats().get("rescans", 0) > rescans)[1],
            10,
            "a rescan",
        )
        got += drain(probes, 0.3)  # samples after it
        seen.update(child=child, own=probes.is_own(child), targets=probes.targets_of("rss"), events=got)

    out = Path(f"/tmp/snapd-trust-core.{os.getpid()}")
    try:
        write_core(v.pid, str(out), snapshot="fork", progress=during_copy, sync=False)
    finally:
        out.unlink(missing_ok=True)
    assert seen, "the copy reported no progress"
    assert seen["own"] is True, seen
    assert seen["targets"] == [v.pid], seen
    assert [e for e in seen["events"] if e.pid == seen["child"]] == [], seen  # type: ignore[attr-defined]
