"""Real eBPF: rules loaded with snapd.probe against victims making known syscalls."""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import select
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapd.probe import Event, Probes
from snapd.rules import RuleError, StopMode
from snapd.rules import syscalls as sysnames
from support.probes import drain, refusing_source, rule
from support.proc import proc_state, syscall_nr
from support.victims import Victim, victim_name
from support.waiting import MIN_WAIT_S, scaled, wait_for

pytestmark = pytest.mark.kernel
Spawn = Callable[..., Victim]


def command(v: Victim, line: str, timeout: float = 10.0) -> int:
    """Send one command to a probe_sys victim; return the tid that ran it."""
    assert v.proc.stdin is not None and v.proc.stdout is not None
    v.proc.stdin.write(line.encode() + b"\n")
    v.proc.stdin.flush()
    fd = v.proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + scaled(max(timeout, MIN_WAIT_S))
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"victim {v.pid} did not answer {line!r}")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"victim {v.pid} exited during {line!r}")
        buf += chunk
    assert buf.startswith(b"done "), buf
    return int(buf.split()[1])


def ready_fields(v: Victim) -> dict[str, int]:
    return {k: int(val) for k, _, val in (w.partition("=") for w in v.ready_line.split()[2:]) if val}


@pytest.fixture
def victim_path(compile_victim: Callable[..., Path]) -> Path:
    return compile_victim("probe_sys")


def collect(p: Probes, until: Callable[[list[Event]], bool], timeout: float = 10.0) -> list[Event]:
    got: list[Event] = []

    def step() -> bool:
        got.extend(p.poll(50))
        return until(got)

    wait_for(step, timeout, "probe events")
    return got


@pytest.mark.lane
def test_matching_rule_fires_with_tid_args_errno(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    pipe_fd = ready_fields(v)["pipe"]
    probes.load(
        rule(
            f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: [write, writev], when: errno == EPIPE}}", "epipe"
        )
    )
    probes.load(rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: write, when: errno == EBADF}}", "ebadf"))
    tid = command(v, "e 1")
    events = collect(probes, lambda ev: len(ev) >= 1)
    events += drain(probes)
    assert [e.rule for e in events] == ["epipe"]
    e = events[0]
    assert (e.pid, e.tid, e.comm, e.kind, e.syscall) == (v.pid, tid, victim_path.name, "syscall", "write")
    assert e.args[0] == pipe_fd and e.args[2] == 1 and len(e.args) == 3
    assert e.ret == -errno.EPIPE and not e.stopped
    assert abs(time.monotonic_ns() - e.time_ns) < 10_000_000_000


@pytest.mark.lane
def test_enter_predicate_on_args(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    f = ready_fields(v)
    probes.load(
        rule(
            f"target: {{comm: {victim_path.name}}}\n"
            f"trigger: {{syscall: write, when: 'arg0 == {f['null']} and arg2 == 1 and pid == {v.pid}'}}",
            "nullw",
        )
    )
    command(v, "e 3")
    assert drain(probes) == []
    command(v, "w 2")
    events = collect(probes, lambda ev: len(ev) >= 2) + drain(probes)
    assert len(events) == 2 and all(e.ret is None and e.args[0] == f["null"] for e in events)


@pytest.mark.lane
def test_predicate_decided_by_its_last_step(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    """A 15-step predicate (8 compares, 7 ors) whose only true term is its last: the kernel
    evaluates it in chunks of steps, and the last chunk decides; the same with a false last term
    never fires."""
    v = spawn([victim_path])
    f = ready_fields(v)
    misses = " or ".join(f"arg2 == {90 + i}" for i in range(7))
    for name, last in (("long", f["null"]), ("longno", 12345)):
        text = f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: write, when: '{misses} or arg0 == {last}'}}"
        probes.load(rule(text, name))
    command(v, "w 1")
    events = collect(probes, lambda ev: len(ev) >= 1) + drain(probes)
    assert [e.rule for e in events] == ["long"] and events[0].args[0] == f["null"], events


@pytest.mark.lane
def test_count_within_fires_exactly_on_nth(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    probes.load(
        rule(
            f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: write, when: errno == EPIPE, count: 5, "
            "within: 30s}",
            "fifth",
        )
    )
    command(v, "e 4")
    assert drain(probes) == []
    command(v, "e 1")
    events = collect(probes, lambda ev: len(ev) >= 1) + drain(probes)
    assert len(events) == 1 and events[0].ret == -errno.EPIPE
    command(v, "e 4")  # the window starts over after a firing
    assert drain(probes) == []
    command(v, "e 1")
    assert len(collect(probes, lambda ev: len(ev) >= 1)) == 1


def test_count_outside_window_does_not_fire(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    probes.load(
        rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid, count: 3, within: 200ms}}", "win")
    )
    command(v, "g 2")
    command(v, "s 400")
    command(v, "g 1")  # three matches, but spread over more than 200 ms
    assert drain(probes) == []
    command(v, "g 3")  # now three fall within the window: exactly one firing
    assert len(collect(probes, lambda ev: len(ev) >= 1) + drain(probes)) == 1


@pytest.mark.lane
def test_every_fires_on_time(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    probes.load(rule(f"target: {{pid: {v.pid}}}\ntrigger: {{every: 200ms}}", "tick"))
    events = collect(probes, lambda ev: len(ev) >= 4, timeout=5)
    assert all(e.kind == "every" and e.pid == v.pid and e.rule == "tick" for e in events)
    gaps = [(b.time_ns - a.time_ns) / 1e6 for a, b in itertools.pairwise(events)]
    assert all(150 <= g <= 260 for g in gaps), gaps


@pytest.mark.lane
def test_cpu_fires_for_spinner_not_idle(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    spinner = spawn([victim_path, "spin"])
    idle = spawn([victim_path])
    for r in (spinner, idle):
        probes.load(
            rule(f"target: {{pid: {r.pid}}}\ntrigger: {{cpu: {{above: 50%, for: 1s}}}}", f"cpu{r.pid}")
        )
    events = collect(probes, lambda ev: any(e.pid == spinner.pid for e in ev), timeout=10)
    events += drain(probes, 0.5)
    assert {e.pid for e in events} == {spinner.pid}
    e = events[0]
    assert e.kind == "cpu" and e.value is not None and e.value >= 50 and e.syscall is None


@pytest.mark.parametrize(
    ("trigger", "cmd", "kind", "floor"),
    [
        ("threads: {above: 3}", "t 4", "threads", 4),
        ("fds: {above: 12}", "f 12", "fds", 13),
        ("rss: {above: 64MiB}", "m 96", "rss", 64 << 20),
    ],
)
@pytest.mark.lane
def test_proc_samplers_fire_on_crossing(
    probes: Probes,
    spawn: Spawn,
    victim_path: Path,
    trigger: str,
    cmd: str,  # type: ignore[no-untyped-def]
    kind: str,
    floor: int,
) -> None:
    v = spawn([victim_path])
    probes.load(rule(f"target: {{pid: {v.pid}}}\ntrigger: {{{trigger}}}", "sampled"))
    assert drain(probes, 0.4) == []  # below the threshold: several samples, no firing
    command(v, cmd)
    events = collect(probes, lambda ev: len(ev) >= 1)
    events += drain(probes, 0.4)  # still above: fires once per crossing
    assert len(events) == 1
    e = events[0]
    assert (e.kind, e.pid, e.rule) == (kind, v.pid, "sampled") and e.value is not None and e.value > floor - 1


@pytest.mark.lane
def test_process_started_later_is_caught(
    probes: Probes, spawn: Spawn, victim_path: Path, tmp_path: Path
) -> None:
    late = tmp_path / victim_name("probe_late")
    shutil.copy(victim_path, late)
    glob = late.name[:7] + "?" + late.name[8:-1] + "*"  # probe_l?te-TAG*: this session's only
    probes.load(rule(f"target: {{comm: '{glob}'}}\ntrigger: {{syscall: getppid}}", "bycomm"))
    probes.load(rule(f"target: {{exe: {late}}}\ntrigger: {{syscall: getppid}}", "byexe"))
    v = spawn([late])
    tid = command(v, "g 2")
    events = collect(probes, lambda ev: len(ev) >= 4) + drain(probes)
    assert sorted(e.rule for e in events) == ["bycomm", "bycomm", "byexe", "byexe"]
    assert all(e.pid == v.pid and e.tid == tid and e.comm == late.name for e in events)


def test_child_of_target_inherits_comm_rule(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    probes.load(rule(f"target: {{comm: {victim_path.name}}}\ntrigger: {{syscall: getppid}}", "inherit"))
    v = spawn([victim_path, "loop"])
    events = collect(probes, lambda ev: len(ev) >= 3)
    assert {e.pid for e in events} == {v.pid}


@pytest.mark.lane
def test_stop_kernel_halts_at_syscall(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    probes.load(
        rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid}}\naction: {{stop: kernel}}", "halt")
    )
    assert v.proc.stdin is not None
    v.proc.stdin.write(b"g 1\n")
    v.proc.stdin.flush()
    events = collect(probes, lambda ev: len(ev) >= 1)
    assert events[0].stopped
    try:
        wait_for(lambda: proc_state(v.pid) == "T", 5, "victim stopped by the probe")
        assert syscall_nr(v.pid) == sysnames.numbers()["getppid"]
    finally:
        os.kill(v.pid, signal.SIGCONT)
    probes.unload("halt")
    wait_for(lambda: proc_state(v.pid) != "T", 5, "victim resumed")
    command(v, "c")  # it answers: the getppid loop finished after SIGCONT


@pytest.mark.parametrize("how", ["unload", "close"])
def test_stopped_target_never_stranded(spawn: Spawn, victim_path: Path, how: str) -> None:
    """A probe stopped the target, but its event never reaches the daemon (the rule was unloaded
    first, or the probes were closed): the probe layer resumes the target itself."""
    p = Probes()
    try:
        v = spawn([victim_path])
        p.load(
            rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid}}\naction: {{stop: kernel}}", "h")
        )
        assert v.proc.stdin is not None
        v.proc.stdin.write(b"g 1\n")
        v.proc.stdin.flush()
        wait_for(lambda: proc_state(v.pid) == "T", 5, "victim stopped by the probe")
        if how == "unload":
            p.unload("h")
            assert p.poll(200) == []  # the event is stale: dropped, and its target released
        else:
            p.close()
        wait_for(lambda: proc_state(v.pid) != "T", 5, "victim resumed by the probe layer")
        command(v, "c")
    finally:
        p.close()


def test_unload_and_reload_leave_others_alone(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    a = rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid}}", "a")
    probes.load(a)
    probes.load(rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid, when: tid > 0}}", "b"))
    command(v, "g 1")
    assert sorted(e.rule for e in collect(probes, lambda ev: len(ev) >= 2)) == ["a", "b"]
    probes.unload("a")
    command(v, "g 1")
    assert [e.rule for e in collect(probes, lambda ev: len(ev) >= 1) + drain(probes)] == ["b"]
    probes.load(a)
    probes.load(a)  # reloading replaces, never duplicates
    command(v, "g 1")
    assert sorted(e.rule for e in collect(probes, lambda ev: len(ev) >= 2) + drain(probes)) == ["a", "b"]
    assert probes.stats()["rules"] == 2
    probes.unload("a")
    probes.unload("b")
    command(v, "g 3")
    assert drain(probes) == []


@pytest.mark.lane
def test_latency_predicate(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    probes.load(
        rule(
            f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: [nanosleep, clock_nanosleep], "
            "when: latency > 150ms}",
            "slow",
        )
    )
    command(v, "s 20")
    assert drain(probes) == []
    command(v, "s 200")
    events = collect(probes, lambda ev: len(ev) >= 1)
    assert events[0].ret == 0 and events[0].syscall in ("nanosleep", "clock_nanosleep")


def test_stats_count_kernel_activity(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    probes.load(rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid, when: tid == 1}}", "never"))
    command(v, "g 10")
    assert drain(probes) == []
    s = probes.stats()
    assert s["kernel_seen"] >= 10 and s["dropped"] == 0 and s["rules"] == 1


def test_compile_error_names_the_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from snapd.probe import probes as probes_mod

    broken = tmp_path / "broken.bpf.c"
    broken.write_text("int snapd_eval(void *ctx) { return syntax error; }\n")
    monkeypatch.setattr(probes_mod, "SOURCE", broken)
    p = Probes()
    try:
        msg = r"^broken-rule\.yaml:1:1: rule 'broken-rule': cannot build the BPF program"
        with pytest.raises(RuleError, match=msg):
            p.load(rule("target: {comm: nothing-here}\ntrigger: {syscall: getppid}", "broken-rule"))
    finally:
        p.close()


def test_a_refused_string_matcher_leaves_every_other_trigger(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spawn: Spawn, victim_path: Path
) -> None:
    """Where the verifier refuses snapd_eval (its string matcher, on 6.1), snapd_eval_plain of
    the same compile takes its place: syscall rules fire, a string comparison is refused."""
    from snapd.probe import probes as probes_mod

    monkeypatch.setattr(probes_mod, "SOURCE", refusing_source(tmp_path, "    return eval_next(ctx, true);\n"))
    v = spawn([victim_path])
    ready_fields(v)
    with Probes() as p:
        p.load(rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: write, when: errno == EPIPE}}", "epipe"))
        assert p.strings_error.startswith("this kernel's verifier refuses snapd's string matcher (")
        glob = f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: openat, when: 'path ~ \"/x*\"'}}"
        with pytest.raises(RuleError, match="string comparisons cannot be armed: this kernel's verifier"):
            p.load(rule(glob, "glob"))
        command(v, "e 1")
        events = collect(p, lambda ev: len(ev) >= 1)
        assert [e.rule for e in events] == ["epipe"]


def test_stop_kernel_needs_an_in_target_probe(probes: Probes) -> None:
    r = rule("target: {comm: nothing-here}\ntrigger: {every: 1s}", "st")
    r = dataclasses.replace(r, action=dataclasses.replace(r.action, stop=StopMode.KERNEL))
    with pytest.raises(
        RuleError, match=r"stop: kernel needs a syscall, function, usdt, signal, cpu or every\+then trigger"
    ):
        probes.load(r)


@pytest.fixture
def test_cgroup() -> Iterator[Path]:
    """A cgroup v2 directory shaped like a unit's: <root>/snapd-probe-test.slice/probe-x.service."""
    from snapd.probe.targets import cgroup2_root

    root = Path(cgroup2_root())
    if not (root / "cgroup.procs").exists():
        pytest.skip("no writable cgroup v2 hierarchy")
    outer = root / f"snapd-probe-test-{os.getpid()}.slice"
    inner = outer / "probe-x.service"
    inner.mkdir(parents=True)
    try:
        yield inner
    finally:
        for d in (inner, outer):  # empty once the test's victims are killed
            wait_for(lambda d=d: _try_rmdir(d), 10, f"rmdir {d}")


def _try_rmdir(d: Path) -> bool:
    try:
        d.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("selector", ["unit", "cgroup"])
@pytest.mark.lane
def test_new_process_in_cgroup_is_caught(
    test_cgroup: Path, probes: Probes, spawn: Spawn, victim_path: Path, selector: str
) -> None:
    # test_cgroup comes first so that it is torn down last, after spawn has killed the victims
    from snapd.probe.targets import cgroup2_root

    rel = "/" + str(test_cgroup.relative_to(cgroup2_root()))
    value = test_cgroup.name if selector == "unit" else rel
    probes.load(rule(f"target: {{{selector}: {value}}}\ntrigger: {{syscall: getppid}}", "cg"))
    procs = test_cgroup / "cgroup.procs"

    def enter_cgroup() -> None:  # runs in the child before exec: exec happens inside the cgroup
        procs.write_text("0\n")

    inside = spawn([victim_path], preexec_fn=enter_cgroup)
    outside = spawn([victim_path])
    command(outside, "g 2")
    tid = command(inside, "g 2")
    events = collect(probes, lambda ev: len(ev) >= 2) + drain(probes)
    assert [(e.pid, e.tid) for e in events] == [(inside.pid, tid)] * 2


def test_many_rules_share_one_probe(probes: Probes, spawn: Spawn, victim_path: Path) -> None:
    v = spawn([victim_path])
    for i in range(32):  # each is one tail call per event; the kernel allows 33
        probes.load(
            rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid, when: tid > {i - 1}}}", f"r{i}")
        )
    assert probes._tp_refs == {"syscalls:sys_enter_getppid": 32}  # one attachment, shared
    with pytest.raises(RuleError, match="more than 32 rules on syscall 'getppid'"):
        probes.load(rule(f"target: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid}}", "r32"))
    command(v, "g 1")
    events = collect(probes, lambda ev: len(ev) >= 32) + drain(probes)
    assert sorted(e.rule for e in events) == sorted(f"r{i}" for i in range(32))
    for i in range(32):
        probes.unload(f"r{i}")
    assert probes._tp_refs == {}
