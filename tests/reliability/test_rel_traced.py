"""Fault 4: the target is already traced (a tracer holding PTRACE_SEIZE, or gdb attached): the
core fails with a clear error naming the tracer, in the catalog and the log, nothing hangs, and
the daemon goes on taking cores."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import DaemonHarness, Victims, syscall_rule
from support.proc import halted_why, thread_states
from support.statedir import check_listing, partials
from support.victims import Victim
from support.waiting import scaled, wait_for

pytestmark = pytest.mark.kernel


def newest(daemon: DaemonHarness, rule: str, after: int) -> dict[str, object]:
    def got() -> dict[str, object] | None:
        return next((c for c in daemon.cores("--rule", rule) if int(c["id"]) > after), None)

    wait_for(got, 30, f"an entry of {rule} after {after}")
    wait_for(daemon.idle, 30, "the daemon to be idle")
    e = got()
    assert e is not None
    return e


def test_already_traced_target(
    daemon: DaemonHarness,
    victims: Victims,
    spawn: Callable[..., Victim],
    compile_victim: Callable[..., Path],
) -> None:
    v = victims(8)
    daemon.write_rule("t.yaml", syscall_rule("t", v.pid))
    daemon.start()
    tracer_exe = compile_victim("rel_tracer")
    last = 0
    for i in range(3):
        tracer = spawn([tracer_exe, v.pid])
        t0 = time.monotonic()
        v.cmd("g 1")  # the victim runs on although it is traced (SEIZE does not stop it)
        e = newest(daemon, "t", last)
        last = int(e["id"])
        took = time.monotonic() - t0
        status = str(e["status"])
        traced = f"already traced by pid {tracer.pid} ({tracer_exe.name})"
        assert status.startswith("failed") and traced in status, e
        assert took < scaled(10), f"round {i}: {took:.1f}s to give up on a traced target"
        lines = [ln for ln in daemon.log_text().splitlines() if f"already traced by pid {tracer.pid}" in ln]
        assert len(lines) == 1 and lines[0].split(" ", 1)[1].startswith("ERROR: rule t: "), lines
        v.cmd("p")
        tracer.kill()  # detaches (the kernel does, as the tracer exits)
        wait_for(lambda: halted_why(v.pid) is None, 5, "the tracer to be gone")
        v.cmd("g 1")  # and now it works
        e = newest(daemon, "t", last)
        last = int(e["id"])
        assert e["status"] == "complete", e
    check_listing(daemon.cores(), daemon.state / "cores")
    assert not partials(daemon.state / "cores")


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_attached_target(daemon: DaemonHarness, victims: Victims) -> None:
    """gdb attached (it stops the target, as gdb does): `ctl snap` fails at once, no hang."""
    v = victims(8)
    daemon.start()
    gdb = subprocess.Popen(
        ["gdb", "-nx", "-q", "-p", str(v.pid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: (halted_why(v.pid) or "").startswith("traced by"), 30, "gdb to attach")
        t0 = time.monotonic()
        r = daemon.ctl("snap", str(v.pid), check=False, timeout=30)
        took = time.monotonic() - t0
        assert r.returncode != 0, r
        out = r.stderr + r.stdout
        assert "already traced by pid" in out and "(gdb)" in out, out
        assert len(out.strip().splitlines()) == 1, out
        assert took < scaled(10)
        assert daemon.status()["dumping"] is None
    finally:
        assert gdb.stdin is not None
        gdb.communicate("detach\nquit\n", timeout=30)
    wait_for(lambda: halted_why(v.pid) is None, 10, "gdb to detach")
    v.cmd("p")
    r = daemon.ctl("snap", str(v.pid), "--json", timeout=60)
    assert r.returncode == 0, r
    check_listing(daemon.cores(), daemon.state / "cores")


def test_stop_kernel_rule_on_a_traced_target(
    daemon: DaemonHarness,
    victims: Victims,
    spawn: Callable[..., Victim],
    compile_victim: Callable[..., Path],
) -> None:
    """stop: kernel sends SIGSTOP from the probe; a tracer would receive it as a signal-delivery
    stop and, unless it handles it, the target would stay halted by snapd's doing."""
    v = victims(8)
    daemon.write_rule("k.yaml", syscall_rule("k", v.pid, action="  stop: kernel\n"))
    daemon.start()
    tracer = spawn([compile_victim("rel_tracer"), v.pid])
    v.send("g 1")
    e = newest(daemon, "k", 0)
    assert str(e["status"]).startswith("failed") and "already traced" in str(e["status"]), e
    v.reply()
    v.cmd("p", timeout=5)  # still running, although its tracer never resumes anything
    assert halted_why(v.pid) == f"traced by {tracer.pid}"
    tracer.kill()
    wait_for(lambda: halted_why(v.pid) is None, 5, "the tracer to be gone")


def test_stop_kernel_spares_a_process_whose_main_thread_is_traced(
    daemon: DaemonHarness,
    victims: Victims,
    spawn: Callable[..., Victim],
    compile_victim: Callable[..., Path],
) -> None:
    """The probe looks at the main thread too: a SIGSTOP sent because another thread made the
    call would stop the whole group, the traced main thread in a stop only its tracer ends.
    (The probe read task->group_leader at the compile-time headers' offset, another kernel's:
    garbage, so the main thread looked untraced.)"""
    v = victims()
    daemon.write_rule(
        "k.yaml",
        syscall_rule("k", v.pid, action="  stop: kernel\n", limits="  max_cores: 1\n  min_interval: 1ms\n"),
    )
    tracer = spawn([compile_victim("rel_tracer"), v.pid, "leader"])
    daemon.start()
    v.cmd("l 50000")  # a second thread calls getppid every 50 ms: it, not the main one, fires
    wait_for(lambda: daemon.rule("k")["seen"] >= 3, 60, "three firings of the second thread")
    v.cmd("p")  # the main thread still answers: nobody stopped the group
    states = {t: s for t, s in thread_states(v.pid).items() if s in "Tt"}
    assert not states, f"threads stopped: {states}"
    tracer.kill()
