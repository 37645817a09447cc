"""DTrace-class triggers end to end (issue 14): a rule file with a `function` trigger dropped in
the rules directory; the event provoked once in a real victim (tests/victims/trg_victim.c); a
core listed; the victim still running. A rule naming a symbol the binary lacks is refused with
its file:line:col, by `snapd check` as root and in the daemon's log."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import DaemonHarness, gdb_bt, halted_why
from tests.conftest import Victim, wait_for

from snapd.rules import syscalls as sysnames
from support.triggers import command as trg_command

pytestmark = pytest.mark.kernel
LIMITS = "limits:\n  max_cores: 10\n  min_interval: 1ms\n"


def command(v: Victim, line: str, timeout: float = 60.0) -> tuple[int, int]:
    """One trg_victim command; (tid, ret) from its 'done TID RET ERRNO' answer."""
    tid, ret, _ = trg_command(v, line, timeout)
    return tid, ret


def function_rule(name: str, pid: int, binary: str, symbol: str, when: str, extra: str = "") -> str:
    at = "return" if "ret" in when else "entry"
    return (
        f"name: {name}\ntarget:\n  pid: {pid}\ntrigger:\n"
        f"  function: {{binary: {binary}, symbol: {symbol}, at: {at}}}\n  when: {when}\n{extra}{LIMITS}"
    )


@pytest.fixture
def trg(compile_victim: Callable[..., Path], spawn: Callable[..., Victim]) -> Victim:
    return spawn([compile_victim("trg_victim")])


def one_core(daemon: DaemonHarness, rule: str) -> dict[str, object]:
    (core,) = wait_for(lambda: daemon.complete(rule), 30, f"a core from rule {rule}")
    assert core["status"] == "complete", core
    return core  # type: ignore[no-any-return]


def test_function_triggers_take_cores_and_the_target_runs_on(daemon: DaemonHarness, trg: Victim) -> None:
    exe = os.readlink(f"/proc/{trg.pid}/exe")
    daemon.write_rule("fn-entry.yaml", function_rule("fn-entry", trg.pid, exe, "trg_marker", "arg0 == 42"))
    daemon.write_rule("fn-ret.yaml", function_rule("fn-ret", trg.pid, exe, "trg_marker", "ret == 1007"))
    daemon.write_rule(
        "fn-malloc.yaml", function_rule("fn-malloc", trg.pid, "libc.so.6", "malloc", "arg0 > 3MiB")
    )
    daemon.write_rule(
        "fn-stop.yaml",
        function_rule("fn-stop", trg.pid, exe, "trg_marker", "arg0 == 99", extra="action:\n  stop: kernel\n"),
    )
    daemon.start()
    assert {r["name"] for r in daemon.rules_list()} >= {"fn-entry", "fn-ret", "fn-malloc", "fn-stop"}

    tid, ret = command(trg, "c 42")
    assert ret == 1042
    core = one_core(daemon, "fn-entry")
    trig = core["trigger"]
    assert isinstance(trig, dict)
    assert (trig["kind"], trig["probe"], trig["args"][0], trig["ret"], trig["tid"]) == (
        "function",
        "trg_marker",
        42,
        None,
        tid,
    )
    assert core["pid"] == trg.pid
    bt = gdb_bt(exe, str(core["path"]))
    assert " main (" in bt, bt

    command(trg, "c 7")
    trig = one_core(daemon, "fn-ret")["trigger"]
    assert isinstance(trig, dict) and trig["ret"] == 1007 and trig["args"][0] == 7

    command(trg, "a 4194304")
    trig = one_core(daemon, "fn-malloc")["trigger"]
    assert isinstance(trig, dict) and trig["probe"] == "malloc" and trig["args"][0] == 4194304

    # stop: kernel: the probe stops the victim inside trg_marker, the core shows it there.
    command(trg, "c 99")
    core = one_core(daemon, "fn-stop")
    assert "trg_marker" in gdb_bt(exe, str(core["path"]))

    # Each rule fired once, for the one event that matched, and the victim runs on.
    assert [len(daemon.complete(r)) for r in ("fn-entry", "fn-ret", "fn-malloc", "fn-stop")] == [1, 1, 1, 1]
    wait_for(lambda: halted_why(trg.pid) is None, 10, "the victim to run")
    assert command(trg, "c 1")[1] == 1001


def test_unknown_symbol_refused_by_check_and_daemon(
    daemon: DaemonHarness, trg: Victim, snapd_cmd: list[str]
) -> None:
    exe = os.readlink(f"/proc/{trg.pid}/exe")
    path = daemon.write_rule("bad-sym.yaml", function_rule("bad-sym", trg.pid, exe, "trg_markr", "arg0 == 1"))
    col = f"  function: {{binary: {exe}, symbol: trg_markr".index("trg_markr") + 1
    r = subprocess.run(
        [*snapd_cmd, "check", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{path}:5:{col}: trigger.function.symbol: no function 'trg_markr'" in r.stdout, r.stdout
    assert "did you mean 'trg_marker'" in r.stdout

    daemon.start()
    wait_for(
        lambda: f"{path}:5:{col}: trigger.function.symbol" in daemon.log_text(), 30, "the refusal logged"
    )
    (row,) = [x for x in daemon.rules_list() if x.get("path") == str(path)]
    assert row["state"].startswith("invalid: ") and "no function 'trg_markr'" in row["state"], row


def test_string_predicates_take_cores(daemon: DaemonHarness, trg: Victim) -> None:
    """openat of a missing file matched by a glob; a write containing a marker string."""
    daemon.write_rule(
        "str-open.yaml",
        f"name: str-open\ntarget:\n  pid: {trg.pid}\ntrigger:\n  syscall: openat\n"
        f"  when: 'path ~ \"/nonexistent/snapd-*.conf\" and errno == ENOENT'\n{LIMITS}",
    )
    daemon.write_rule(
        "str-write.yaml",
        f"name: str-write\ntarget:\n  pid: {trg.pid}\ntrigger:\n  syscall: write\n"
        f"  when: 'data contains \"FATAL\" and count < 1KiB'\n{LIMITS}",
    )
    daemon.start()
    command(trg, "o " + b"/nonexistent/other.conf".hex())
    command(trg, "o " + b"/nonexistent/snapd-db.conf".hex())
    trig = one_core(daemon, "str-open")["trigger"]
    assert isinstance(trig, dict) and trig["syscall"] == "openat" and trig["ret"] == -2
    command(trg, "w " + b"all good".hex())
    command(trg, "w " + b"x FATAL y".hex())
    trig = one_core(daemon, "str-write")["trigger"]
    assert isinstance(trig, dict) and trig["syscall"] == "write" and trig["args"][2] == 9
    assert [len(daemon.complete(r)) for r in ("str-open", "str-write")] == [1, 1]
    wait_for(lambda: halted_why(trg.pid) is None, 10, "the victim to run")
    assert command(trg, "c 1")[1] == 1001


@pytest.mark.lane
def test_sigterm_to_a_graceful_handler_core_before_it_exits(
    daemon: DaemonHarness, compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    exe = compile_victim("trg_sig")
    v = spawn([exe, "handler"])
    daemon.write_rule(
        "sig-term.yaml",
        f"name: sig-term\ntarget:\n  pid: {v.pid}\ntrigger:\n  signal: [SIGTERM, SIGUSR2]\n"
        f"action:\n  stop: kernel\n{LIMITS}",
    )
    daemon.start()
    sender = subprocess.Popen(["kill", "-TERM", str(v.pid)])  # procps kill(1): its comm is "kill"
    assert sender.wait(timeout=30) == 0
    core = one_core(daemon, "sig-term")
    trig = core["trigger"]
    assert isinstance(trig, dict) and (trig["kind"], trig["probe"], trig["value"]) == (
        "signal",
        "SIGTERM",
        15,
    )
    # who sent it: the answer to "who killed it?"
    assert trig["sender"] == {"pid": sender.pid, "uid": 0, "comm": "kill", "code": 0, "by": "kill"}, trig
    info = daemon.ctl("info", str(core["id"])).stdout
    assert f"Sent by: pid {sender.pid} (kill) uid 0, kill" in info, info
    # Stopped at the handler's first instruction: the core shows it on top, main below.
    bt = gdb_bt(str(exe), str(core["path"]))
    assert "trg_on_term" in bt and " main (" in bt, bt
    # Then resumed: the handler ran and the process shut down gracefully.
    assert v.proc.wait(timeout=30) == 0
    assert v.proc.stdout is not None and b"graceful 15" in v.proc.stdout.read()


def test_every_then_syscall_cores_caught_inside_the_syscall(
    daemon: DaemonHarness, compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    """The blog's gcore.d as one rule: each tick arms, the target's next clock_nanosleep is
    stopped inside the syscall, a core is taken there, and it runs on."""
    exe = compile_victim("trg_tick")
    v = spawn([exe, "2"])
    daemon.write_rule(
        "gcore-d.yaml",
        f"name: gcore-d\ntarget:\n  pid: {v.pid}\ntrigger:\n  every: 1s\n"
        "  then:\n    syscall: [read, clock_nanosleep]\naction:\n  stop: kernel\n"
        "limits:\n  max_cores: 2\n  min_interval: 1ms\n",
    )
    daemon.start()
    cores = wait_for(
        lambda: daemon.complete("gcore-d")[:2] if len(daemon.complete("gcore-d")) >= 2 else None,
        60,
        "two cores",
    )
    for core in cores:
        trig = core["trigger"]
        assert trig["syscall"] == "clock_nanosleep" and core["pid"] == v.pid, trig
        bt = gdb_bt(str(exe), str(core["path"]))
        assert "nanosleep" in bt and "loop" in bt, bt
    wait_for(lambda: halted_why(v.pid) is None, 10, "the victim to run")
    assert v.alive()


@pytest.mark.lane
def test_every_then_any_syscall_one_core_caught_inside_it(
    daemon: DaemonHarness, compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    """``then: any``: the target's next syscall after the tick, whichever it is, is stopped there
    and cored (every syscall tracepoint is attached while the rule is loaded)."""
    exe = compile_victim("trg_tick")
    v = spawn([exe, "1"])
    daemon.write_rule(
        "any.yaml",
        f"name: any\ntarget:\n  pid: {v.pid}\ntrigger:\n  every: 1s\n  then: any\n"
        "action:\n  stop: kernel\nlimits:\n  max_cores: 1\n",
    )
    daemon.start()
    (core,) = wait_for(lambda: daemon.complete("any"), 60, "a core")
    assert core["pid"] == v.pid and core["trigger"]["syscall"] in (sysnames.known_names() or ()), core
    bt = gdb_bt(str(exe), str(core["path"]))
    assert "loop" in bt, bt
    wait_for(lambda: halted_why(v.pid) is None, 10, "the victim to run")
    assert v.alive()


def test_usdt_python_function_entry_takes_a_core(daemon: DaemonHarness, spawn: Callable[..., Victim]) -> None:
    """CPython's python:function__entry (arg2: the line) on a script, through the daemon
    (Debian's 3.11 fires it only while a profile function is set: tests/victims/trg_py.py)."""
    python = "/usr/bin/python3.11"
    if not Path(python).exists():
        pytest.skip("no /usr/bin/python3.11")
    script = Path(__file__).resolve().parent.parent / "victims" / "trg_py.py"
    v = spawn([python, str(script), "profile"])
    line = int(v.ready_line.split("line=")[1])
    daemon.write_rule(
        "py-entry.yaml",
        f"name: py-entry\ntarget:\n  pid: {v.pid}\ntrigger:\n"
        f"  usdt: {{binary: {python}, probe: 'python:function__entry'}}\n  when: arg2 == {line}\n{LIMITS}",
    )
    daemon.start()
    command(v, "x 41")
    core = one_core(daemon, "py-entry")
    trig = core["trigger"]
    assert isinstance(trig, dict) and (trig["kind"], trig["probe"], trig["args"][2]) == (
        "usdt",
        "python:function__entry",
        line,
    )
    wait_for(lambda: halted_why(v.pid) is None, 10, "the victim to run")
    assert command(v, "a 1")[1] == 0  # it answers (sys.audit: no call of trg_fn)
    assert len(daemon.complete("py-entry")) == 1
