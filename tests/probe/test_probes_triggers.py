"""Real uprobes through Probes: function rules (entry with arg0, return with ret, libc's malloc
with a size) on tests/victims/trg_victim.c, each event provoked once; usdt rules on CPython;
what cannot be resolved is a RuleError at the rule key's line and column."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.conftest import Victim, wait_for

from snapd.probe import Event, Probes
from snapd.probe import probes as probes_module
from snapd.rules import Rule, RuleError, parse_rule
from snapd.rules.model import FunctionTrigger, UsdtTrigger
from support.probes import refusing_source
from support.triggers import command as trg_command

pytestmark = pytest.mark.kernel
Spawn = Callable[..., Victim]
LIBC = "libc.so.6"


def rule(text: str, name: str = "t") -> Rule:
    r, errors = parse_rule(f"name: {name}\n" + text, f"{name}.yaml")
    assert not errors, [str(e) for e in errors]
    assert r is not None
    return r


def command(v: Victim, line: str, timeout: float = 30.0) -> tuple[int, int]:
    """One trg_victim command; (tid, ret) from its 'done TID RET ERRNO' answer."""
    tid, ret, _ = trg_command(v, line, timeout)
    return tid, ret


@pytest.fixture
def probes() -> Iterator[Probes]:
    p = Probes()
    yield p
    p.close()


@pytest.fixture
def victim(compile_victim: Callable[..., Path], spawn: Spawn) -> Victim:
    return spawn([compile_victim("trg_victim")])


def events(p: Probes, n: int, settle: float = 0.3) -> list[Event]:
    got: list[Event] = []

    def step() -> bool:
        got.extend(p.poll(50))
        return len(got) >= n

    wait_for(step, 10, f"{n} probe event(s)")
    end = time.monotonic() + settle
    while time.monotonic() < end:
        got.extend(p.poll(20))
    return got


def fn_rule(
    pid: int, exe: str, when: str, at: str = "entry", symbol: str = "trg_marker", name: str = "t"
) -> Rule:
    return rule(
        f"target: {{pid: {pid}}}\n"
        f"trigger:\n  function: {{binary: {exe}, symbol: {symbol}, at: {at}}}\n  when: {when}\n",
        name,
    )


@pytest.mark.lane
def test_function_entry_arg0(probes: Probes, victim: Victim) -> None:
    exe = os.readlink(f"/proc/{victim.pid}/exe")
    probes.load(fn_rule(victim.pid, exe, "arg0 == 42"))
    assert probes.targets_of("t") == [victim.pid]
    # a process sharing the target's mm (CLONE_VM, as posix_spawn makes) hits the same
    # breakpoint, and is not the target
    _, child = command(victim, "V 42")
    assert child > 0
    command(victim, "c 41")
    tid, ret = command(victim, "c 42")
    (ev,) = events(probes, 1)
    assert (ev.kind.value, ev.probe, ev.pid, ev.tid, ev.args[0], ev.ret) == (
        "function",
        "trg_marker",
        victim.pid,
        tid,
        42,
        None,
    )
    assert ret == 1042


@pytest.mark.lane
def test_a_targets_fork_is_probed_before_the_rescan(
    probes: Probes, victim: Victim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target's child is attached when the fork probe says so, not at the next /proc rescan
    (put off here for the whole test): its call, half a second after the fork, fires."""
    monkeypatch.setattr(probes_module, "RESCAN_INTERVAL_S", 3600.0)
    exe = os.readlink(f"/proc/{victim.pid}/exe")
    comm = Path(exe).name[:15]
    probes.load(
        rule(
            f"target: {{comm: {comm}}}\n"
            f"trigger:\n  function: {{binary: {exe}, symbol: trg_marker}}\n  when: arg0 == 4242\n"
        )
    )
    assert probes.poll(10) == []  # the first rescan, done: the next one is an hour away
    _, child = command(victim, "k 4242 500")
    (ev,) = events(probes, 1)
    assert (ev.pid, ev.args[0], ev.probe) == (child, 4242, "trg_marker")


@pytest.mark.lane
def test_a_process_that_becomes_a_target_at_exec_is_probed_before_the_rescan(
    probes: Probes, compile_victim: Callable[..., Path], spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process started after the rule, a target from its exec on, is attached when the exec
    probe says so: with the rescan an hour away, its first call fires."""
    monkeypatch.setattr(probes_module, "RESCAN_INTERVAL_S", 3600.0)
    exe = compile_victim("trg_victim")
    probes.load(
        rule(
            f"target: {{comm: {exe.name[:15]}}}\n"
            f"trigger:\n  function: {{binary: {exe}, symbol: trg_marker}}\n  when: arg0 == 4343\n"
        )
    )
    assert probes.poll(10) == []  # the first rescan, done: the next one is an hour away
    v = spawn([exe])
    assert probes.poll(100) == []  # reads the exec's record: attached now
    command(v, "c 4343")
    (ev,) = events(probes, 1)
    assert (ev.pid, ev.args[0], ev.probe) == (v.pid, 4343, "trg_marker")


def test_a_library_rule_on_a_process_started_later_fires(
    probes: Probes, compile_victim: Callable[..., Path], spawn: Spawn
) -> None:
    """A libc rule in a process started after it: attached by the exec record if libc is
    mapped when snapd reads it, else (ld.so not done yet: no failure counted) by the rescan."""
    exe = compile_victim("trg_victim")
    probes.load(
        rule(
            f"target: {{comm: {exe.name[:15]}}}\n"
            f"trigger:\n  function: {{binary: {LIBC}, symbol: malloc}}\n  when: arg0 == 7777777\n"
        )
    )
    v = spawn([exe])
    got: list[Event] = []

    def fired() -> bool:  # a malloc per try: the rescan attaches the rule in its own time
        command(v, "a 7777777")
        got.extend(probes.poll(100))
        return bool(got)

    wait_for(fired, 30, "a malloc event once the rescan has attached libc")
    assert {(ev.pid, ev.args[0], ev.probe) for ev in got} == {(v.pid, 7777777, "malloc")}
    assert probes.take_problems() == []


@pytest.mark.lane
def test_function_return_ret(probes: Probes, victim: Victim) -> None:
    exe = os.readlink(f"/proc/{victim.pid}/exe")
    probes.load(fn_rule(victim.pid, exe, "ret == 1007 and latency > 0ns", at="return"))
    command(victim, "c 8")
    command(victim, "c 7")
    (ev,) = events(probes, 1)
    assert (ev.ret, ev.args[0], ev.probe) == (1007, 7, "trg_marker")


def bpf_link_types() -> list[str]:
    """The link_type of every BPF link this process holds (/proc/self/fdinfo, Linux 5.7+)."""
    kinds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:bpf_link":
                continue
            text = Path(f"/proc/self/fdinfo/{name}").read_text()
        except OSError:
            continue
        kinds += [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("link_type:")]
    return sorted(kinds)


@pytest.mark.lane
def test_a_return_rule_is_attached_as_the_kernel_allows(probes: Probes, victim: Victim) -> None:
    """Where the kernel filters uprobe_multi links by process (6.10+), a function rule's entry
    and return are two such links, which take no lock per hit; elsewhere (Debian 12's 6.1) two
    perf-event uprobes. Either way the rule fires once, for its target."""
    from snapd import kernel

    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    multi = kernel.has(kernel.Feature.UPROBE_MULTI)
    assert multi == (release >= (6, 10)), kernel.probe(kernel.Feature.UPROBE_MULTI)
    before = bpf_link_types()
    exe = os.readlink(f"/proc/{victim.pid}/exe")
    probes.load(fn_rule(victim.pid, exe, "ret == 1007", at="return"))
    added = list(bpf_link_types())
    for kind in before:
        added.remove(kind)
    want = ["uprobe_multi", "uretprobe_multi"] if multi else ["perf", "perf"]
    assert added == want, before
    command(victim, "c 7")
    (ev,) = events(probes, 1)
    assert (ev.ret, ev.pid) == (1007, victim.pid)


def test_malloc_arg0_above_a_size(probes: Probes, victim: Victim) -> None:
    probes.load(fn_rule(victim.pid, LIBC, "arg0 > 3MiB", symbol="malloc"))
    command(victim, "a 4096")
    command(victim, "a 4194304")
    (ev,) = events(probes, 1)
    assert ev.args[0] == 4194304 and ev.probe == "malloc"


@pytest.mark.lane
def test_stop_kernel_in_a_function(probes: Probes, victim: Victim) -> None:
    exe = os.readlink(f"/proc/{victim.pid}/exe")
    r = rule(
        f"target: {{pid: {victim.pid}}}\n"
        f"trigger:\n  function: {{binary: {exe}, symbol: trg_marker}}\n  when: arg0 == 5\n"
        "action: {stop: kernel}\n"
    )
    probes.load(r)
    assert victim.proc.stdin is not None
    victim.proc.stdin.write(b"c 5\n")
    victim.proc.stdin.flush()
    (ev,) = events(probes, 1, settle=0)
    assert ev.stopped
    wait_for(lambda: Path(f"/proc/{victim.pid}/stat").read_text().split()[2] == "T", 10, "the victim stopped")
    assert victim.pid in probes.stopped()
    os.kill(victim.pid, 18)  # SIGCONT
    probes.forget_stopped(victim.pid)


def test_unknown_symbol_is_refused_at_its_key(probes: Probes, victim: Victim) -> None:
    exe = os.readlink(f"/proc/{victim.pid}/exe")
    r = fn_rule(victim.pid, exe, "arg0 == 1", symbol="trg_markr")
    with pytest.raises(RuleError) as ei:
        probes.load(r)
    err = ei.value
    line = f"  function: {{binary: {exe}, symbol: trg_markr, at: entry}}"
    assert (err.line, err.col) == (4, line.index("trg_markr") + 1), str(err)
    assert "trigger.function.symbol: no function 'trg_markr'" in err.msg and "trg_marker" in err.msg
    assert probes.loaded() == []


def test_unknown_binary_is_refused_at_its_key(probes: Probes, victim: Victim) -> None:
    r = fn_rule(victim.pid, "/nonexistent/snapd-bin", "arg0 == 1")
    with pytest.raises(RuleError) as ei:
        probes.load(r)
    assert (ei.value.line, ei.value.col) == (4, 22)
    assert ei.value.msg.startswith("trigger.function.binary: ")


# ---- usdt --------------------------------------------------------------------------------------

PYTHON = "/usr/bin/python3.11"
VICTIMS = Path(__file__).resolve().parent.parent / "victims"


def semaphore(pid: int, file_offset: int) -> int:
    """The u16 at ``file_offset`` of python3.11 as mapped in ``pid``."""
    st = os.stat(PYTHON)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        start, end = (int(x, 16) for x in parts[0].split("-"))
        off, ino = int(parts[2], 16), int(parts[4])
        if ino == st.st_ino and off <= file_offset < off + (end - start):
            with open(f"/proc/{pid}/mem", "rb") as f:
                f.seek(start + file_offset - off)
                return int.from_bytes(f.read(2), "little")
    raise AssertionError(f"{PYTHON}+{file_offset:#x} not mapped in {pid}")


@pytest.mark.lane
def test_usdt_python_function_entry(probes: Probes, spawn: Spawn) -> None:
    """python:function__entry with arg2 (the line) == trg_fn's; its semaphore set in the target
    only and cleared when the rule goes. (CPython 3.11 fires it only while a profile function
    is set: tests/victims/trg_py.py.)"""
    if not Path(PYTHON).exists():
        pytest.skip("no /usr/bin/python3.11")
    from snapd.probe import symbols, usdt

    v = spawn([PYTHON, str(VICTIMS / "trg_py.py"), "profile"])
    other = spawn([PYTHON, str(VICTIMS / "trg_py.py"), "profile"])
    line = int(v.ready_line.split("line=")[1])
    (site,) = usdt.find(symbols.resolve_binary(PYTHON), "python:function__entry")
    r = rule(
        f"target: {{pid: {v.pid}}}\n"
        f"trigger:\n  usdt: {{binary: {PYTHON}, probe: 'python:function__entry'}}\n  when: arg2 == {line}\n"
    )
    probes.load(r)
    assert semaphore(v.pid, site.semaphore_offset) == 1
    assert semaphore(other.pid, site.semaphore_offset) == 0
    command(other, "x 5")
    command(v, "x 5")
    (ev,) = events(probes, 1)
    assert (ev.kind.value, ev.probe, ev.pid, ev.args[2]) == ("usdt", "python:function__entry", v.pid, line)
    probes.unload("t")
    wait_for(lambda: semaphore(v.pid, site.semaphore_offset) == 0, 10, "the semaphore cleared")


def test_a_refused_uprobe_matcher_leaves_every_other_uprobe_rule(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, victim: Victim
) -> None:
    """Where the verifier refuses the string matcher in snapd_uprobe, the _plain pair of the same
    compile takes its place: a function rule fires, one with a string comparison is refused."""
    refused = refusing_source(tmp_path, "    return uprobe_hit(ctx, 0, true);\n")
    monkeypatch.setattr(probes_module, "SOURCE", refused)
    exe = os.readlink(f"/proc/{victim.pid}/exe")
    with Probes() as p:
        p.compile()
        assert p.ustrings_error.startswith("this kernel's verifier refuses snapd's string matcher ("), (
            p.ustrings_error
        )
        r = fn_rule(victim.pid, LIBC, 'arg2 ~ "/x*"', symbol="syscall", name="glob")
        with pytest.raises(RuleError, match="string comparisons cannot be armed: this kernel's verifier"):
            p.load(r)
        p.load(fn_rule(victim.pid, exe, "arg0 == 42"))
        command(victim, "c 42")
        (ev,) = events(p, 1)
        assert (ev.rule, ev.args[0]) == ("t", 42)


@pytest.mark.lane
def test_usdt_string_argument(probes: Probes, spawn: Spawn) -> None:
    """DTrace's copyinstr(arg1) == "trg_fn": python:function__entry's arg1 is the function's
    name (a char *), matched in the kernel; another function of the same file passes nothing."""
    if not Path(PYTHON).exists():
        pytest.skip("no /usr/bin/python3.11")
    v = spawn([PYTHON, str(VICTIMS / "trg_py.py"), "profile"])
    line = int(v.ready_line.split("line=")[1])
    r = rule(
        f"target: {{pid: {v.pid}}}\n"
        f"trigger:\n  usdt: {{binary: {PYTHON}, probe: 'python:function__entry'}}\n"
        '  when: arg1 == "trg_fn" and arg0 ~ "*/trg_py.py"\n'
    )
    if not armed(probes, r):
        return
    command(v, "o 5")
    assert events(probes, 0) == [], "trg_other is not trg_fn"
    command(v, "x 5")
    (ev,) = events(probes, 1)
    assert (ev.probe, ev.pid, ev.args[2]) == ("python:function__entry", v.pid, line)


@pytest.mark.lane
def test_function_string_argument(probes: Probes, victim: Victim) -> None:
    """A libc function's string argument: syscall(SYS_openat, AT_FDCWD, path, ...) with the
    path (arg2) matched by a glob; the same call with another path passes nothing."""
    r = fn_rule(victim.pid, LIBC, 'arg0 == 257 and arg2 ~ "/nonexistent/snapd-mark-*"', symbol="syscall")
    if not armed(probes, r):
        return
    command(victim, "o " + b"/nonexistent/other-1".hex())
    assert events(probes, 0) == []
    command(victim, "o " + b"/nonexistent/snapd-mark-1".hex())
    (ev,) = events(probes, 1)
    assert (ev.probe, ev.pid, ev.args[0]) == ("syscall", victim.pid, 257)


def test_string_comparisons_of_uprobe_rules_name_an_argument() -> None:
    for trig in (
        "usdt: {binary: /bin/true, probe: 'a:b'}",
        "function: {binary: /bin/true, symbol: main, at: return}",
    ):
        _, errors = parse_rule(
            f'name: t\ntarget: {{pid: 1}}\ntrigger:\n  {trig}\n  when: arg0 > 1 and path ~ "/x"\n', "t.yaml"
        )
        assert [(e.line, e.col) for e in errors] == [(5, 22)], [str(e) for e in errors]
        assert "arg0..arg5" in str(errors[0])


@pytest.mark.lane
def test_usdt_operands_past_the_sixth(probes: Probes, victim: Victim) -> None:
    """arg6..arg11 are a USDT probe's seventh to twelfth operands: trg:eight has 8."""
    exe = os.readlink(f"/proc/{victim.pid}/exe")
    probes.load(
        rule(
            f"target: {{pid: {victim.pid}}}\n"
            f"trigger:\n  usdt: {{binary: {exe}, probe: 'trg:eight'}}\n  when: arg7 == 507 and arg0 == 500\n"
        )
    )
    command(victim, "u 400")  # arg7 407
    command(victim, "u 500")
    (ev,) = events(probes, 1)
    # the event shows every operand the site has, and no more
    assert (ev.probe, ev.args) == ("trg:eight", tuple(range(500, 508)))


def test_arg6_and_up_are_a_usdt_probes_only() -> None:
    for trig, key in (
        ("syscall: write", "a syscall has at most 6"),
        ("function: {binary: /bin/true, symbol: main}", "not known"),
    ):
        _, errors = parse_rule(
            f"name: t\ntarget: {{pid: 1}}\ntrigger:\n  {trig}\n  when: arg6 == 1\n", "t.yaml"
        )
        assert len(errors) == 1 and key in str(errors[0]), [str(e) for e in errors]


def test_unknown_usdt_probe_is_refused_at_its_key(probes: Probes, spawn: Spawn) -> None:
    if not Path(PYTHON).exists():
        pytest.skip("no /usr/bin/python3.11")
    v = spawn([PYTHON, str(VICTIMS / "trg_py.py")])
    r = rule(
        f"target: {{pid: {v.pid}}}\ntrigger:\n  usdt: {{binary: {PYTHON}, probe: 'python:function_entry'}}\n"
    )
    with pytest.raises(RuleError) as ei:
        probes.load(r)
    assert ei.value.line == 4 and ei.value.msg.startswith("trigger.usdt.probe: no USDT probe"), str(ei.value)
    assert "function__entry" in ei.value.msg


# ---- strings on syscalls -----------------------------------------------------------------------


def sys_rule(pid: int, syscall: str, when: str) -> Rule:
    return rule(f"target: {{pid: {pid}}}\ntrigger:\n  syscall: {syscall}\n  when: '{when}'\n")


def armed(probes: Probes, r: Rule) -> bool:
    """Load a rule with a string comparison: True once armed. Where this kernel's verifier
    refuses the string matcher (6.1: docs/kernels.md; for a function/usdt rule, the one in the
    uprobe programs), the refusal is the behaviour asserted."""
    probes.compile()
    uprobe = isinstance(r.trigger, (FunctionTrigger, UsdtTrigger))
    if not (probes.ustrings_error if uprobe else probes.strings_error):
        probes.load(r)
        return True
    with pytest.raises(RuleError, match="string comparisons cannot be armed: this kernel's verifier refuses"):
        probes.load(r)
    return False


@pytest.mark.lane
def test_openat_of_a_missing_file_matched_by_a_glob(probes: Probes, victim: Victim) -> None:
    when = 'path ~ "/nonexistent/snapd-*/x?z" and errno == ENOENT'
    if not armed(probes, sys_rule(victim.pid, "openat", when)):
        return
    command(victim, "o " + b"/nonexistent/snapd-a/xyy".hex())  # the glob does not match
    command(victim, "o " + b"/dev/null".hex())  # no error
    command(victim, "o " + b"/nonexistent/snapd-abc/xyz".hex())
    (ev,) = events(probes, 1)
    assert (ev.syscall, ev.ret) == ("openat", -2)


@pytest.mark.lane
def test_write_containing_a_marker(probes: Probes, victim: Victim) -> None:
    if not armed(probes, sys_rule(victim.pid, "[write, writev]", 'data contains "FA\\x01TAL" and fd > 0')):
        return
    command(victim, "w " + b"all is well".hex())
    command(victim, "w " + b"xxFA\x01TALyy".hex())
    (ev,) = events(probes, 1)
    assert ev.syscall == "write" and ev.args[2] == 10


# ---- signals -----------------------------------------------------------------------------------


@pytest.mark.lane
def test_signal_to_a_handler_stops_it_before_the_handler(
    probes: Probes, compile_victim: Callable[..., Path], spawn: Spawn
) -> None:
    v = spawn([compile_victim("trg_sig"), "handler"])
    probes.load(rule(f"target: {{pid: {v.pid}}}\ntrigger:\n  signal: SIGTERM\naction: {{stop: kernel}}\n"))
    os.kill(v.pid, 15)
    (ev,) = events(probes, 1, settle=0)
    assert (ev.kind.value, ev.probe, ev.value, ev.args[0], ev.stopped) == ("signal", "SIGTERM", 15, 15, True)
    wait_for(lambda: Path(f"/proc/{v.pid}/stat").read_text().split()[2] == "T", 10, "the victim stopped")
    assert v.proc.poll() is None  # stopped before the handler: it has not exited
    os.kill(v.pid, 18)
    probes.forget_stopped(v.pid)
    assert v.proc.wait(timeout=30) == 0


def test_signal_with_the_default_action_does_not_fire(
    probes: Probes, compile_victim: Callable[..., Path], spawn: Spawn
) -> None:
    v = spawn([compile_victim("trg_sig"), "default"])
    probes.load(rule(f"target: {{pid: {v.pid}}}\ntrigger:\n  signal: SIGTERM\naction: {{stop: kernel}}\n"))
    os.kill(v.pid, 15)
    assert v.proc.wait(timeout=30) == -15
    assert events(probes, 0, settle=0.5) == []
    # Its sender was recorded and never taken by a delivery; with the last signal rule gone the
    # record goes too: it must not name the sender of a delivery it never saw sent.
    senders = probes._bpf[b"sig_senders"]
    assert [(k.tgid, k.sig) for k in senders] == [(v.pid, 15)]
    probes.unload("t")
    assert list(senders) == []


def test_function_event_carries_the_stack_at_the_event(probes: Probes, victim: Victim) -> None:
    """The uprobe records the registers (rip = trg_marker's runtime address) and the top of
    the stack (the return address into main at rsp) as Event.stack."""
    import struct

    exe = os.readlink(f"/proc/{victim.pid}/exe")
    probes.load(fn_rule(victim.pid, exe, "arg0 == 77"))
    command(victim, "c 77")
    (ev,) = events(probes, 1)
    assert ev.stack is not None
    regs = struct.unpack("<27Q", ev.stack.regs)
    marker = int(victim.ready_line.split("marker=")[1].split()[0], 16)
    assert regs[16] == marker  # rip
    assert regs[19] % 8 == 0 and 8 <= len(ev.stack.stack) <= 16 * 1024  # rsp, the stack above it
    ret_addr = struct.unpack_from("<Q", ev.stack.stack)[0]
    maps = Path(f"/proc/{victim.pid}/maps").read_text().splitlines()
    text = [ln for ln in maps if " r-xp " in ln and ln.endswith(exe)]
    assert any(int(a, 16) <= ret_addr < int(b, 16) for a, b in (ln.split()[0].split("-") for ln in text))


def test_a_compared_string_counts_as_an_argument_read() -> None:
    """python:function__entry has three operands: `arg3 == "x"` would read past them (a stale
    pointer in per-CPU memory), so it is refused at the host check, as `arg3 == 1` is."""
    if not Path(PYTHON).exists():
        pytest.skip("no /usr/bin/python3.11")
    from snapd.probe import uattach
    from snapd.probe.symbols import ResolveError

    r = rule(
        f"target: {{pid: 1}}\ntrigger:\n  usdt: {{binary: {PYTHON}, probe: 'python:function__entry'}}\n"
        '  when: arg3 == "x"\n'
    )
    assert isinstance(r.trigger, UsdtTrigger)
    assert uattach.nargs_used(r.trigger) == 4
    with pytest.raises(ResolveError, match="arg3 is used"):
        uattach.host_check(r.trigger)
