"""Limits between a firing and a core: max_cores, min_interval, the active window, the pause
switch (which survives a restart), on-demand `ctl snap`, and retention (--max-use)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest

from support.daemon import DaemonHarness, DVictim, Victims, clock_rule, syscall_rule
from support.gdb import gdb_bt
from support.proc import halted_why
from support.waiting import wait_for

pytestmark = pytest.mark.kernel


def fire_one_by_one(daemon: DaemonHarness, v: DVictim, rule: str, n: int) -> None:
    """n getppid() firings, each one seen by the daemon before the next (the limiter measures
    min_interval on the daemon's clock, so a burst would blur max_cores into min_interval)."""
    base = daemon.rule(rule)["seen"]
    for i in range(1, n + 1):
        v.cmd("g 1")
        wait_for(lambda i=i: daemon.rule(rule)["seen"] == base + i, 10, f"firing {i} of {rule} seen")
    wait_for(daemon.idle, 30, "the dumps to finish")


def test_max_cores_min_interval_active_suppress_and_count(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims()
    daemon.write_rule(
        "maxc.yaml", syscall_rule("maxc", v.pid, limits="  max_cores: 2\n  min_interval: 1ms\n")
    )
    daemon.write_rule(
        "mini.yaml", syscall_rule("mini", v.pid, limits="  max_cores: 10\n  min_interval: 1h\n")
    )
    # A window that excludes now (local time, like the daemon): from +2h to +3h.
    now = dt.datetime.now()
    a, b = now + dt.timedelta(hours=2), now + dt.timedelta(hours=3)
    window = f'active: "{a:%H:%M}-{b:%H:%M}"\n'
    daemon.write_rule("night.yaml", syscall_rule("night", v.pid, extra=window))
    daemon.start()
    assert daemon.rule("night")["active"] == f"{a:%H:%M}-{b:%H:%M}"

    # Each firing is seen (the night rule is never muted) before the next: the rules that
    # took a core were muted in the kernel by then (max_cores spent, min_interval running).
    fire_one_by_one(daemon, v, "night", 5)

    maxc, mini, night = daemon.rule("maxc"), daemon.rule("mini"), daemon.rule("night")
    # What a muted rule would only have suppressed never reaches the daemon: counted in the
    # kernel instead, and every firing is accounted for.
    assert maxc["seen"] == 2 and maxc["muted"] == 3 and maxc["cores"] == 2, maxc
    assert maxc["suppressed"] == {} and maxc["state"] == "muted (budget spent)", maxc
    assert mini["seen"] == 1 and mini["muted"] == 4 and mini["cores"] == 1, mini
    assert mini["suppressed"] == {} and mini["state"] == "armed", mini
    assert night["seen"] == 5 and night["cores"] == 0 and night["suppressed"] == {"inactive": 5}, night
    assert len(daemon.complete("maxc")) == 2
    assert len(daemon.complete("mini")) == 1
    assert daemon.cores("--rule", "night") == []
    st = daemon.status()
    assert st["suppressed"] == {"inactive": 5}, st
    assert st["probes"]["kernel_muted"] == 7, st["probes"]
    assert st["cores"] == 3 and st["failed"] == 0
    v.cmd("p")


def test_pause_suppresses_survives_restart_resume_restores(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims()
    daemon.write_rule("p.yaml", syscall_rule("p", v.pid))
    daemon.start()
    daemon.ctl("pause", "--reason", "e2e test")
    st = daemon.status()
    assert st["paused"]["paused"] is True and st["paused"]["reason"] == "e2e test"

    fire_one_by_one(daemon, v, "p", 2)
    assert daemon.rule("p")["suppressed"] == {"paused": 2}
    r = daemon.ctl("snap", str(v.pid), check=False)
    assert r.returncode != 0 and "paused" in r.stderr, r  # on-demand cores are paused too
    assert daemon.cores() == []

    daemon.stop()
    daemon.start()
    assert daemon.status()["paused"]["paused"] is True, "the pause did not survive a restart"
    fire_one_by_one(daemon, v, "p", 1)
    assert daemon.rule("p")["suppressed"] == {"paused": 1}
    assert daemon.cores() == []

    daemon.ctl("resume")
    assert daemon.status()["paused"]["paused"] is False
    fire_one_by_one(daemon, v, "p", 1)
    (core,) = wait_for(lambda: daemon.complete("p"), 20, "a core after resume")
    assert core["pid"] == v.pid
    v.cmd("p")


@pytest.mark.lane
def test_ctl_snap_on_demand(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims(touch_mib=4)
    daemon.start()
    out = json.loads(daemon.ctl("snap", str(v.pid), "--json").stdout)
    assert out["status"] == "complete" and out["pid"] == v.pid, out
    (core,) = daemon.complete("ctl-snap")
    assert core["id"] == out["id"] and core["trigger"]["kind"] == "ctl"
    assert core["comm"] == v.comm
    assert os.stat(core["path"]).st_mode & 0o777 == 0o600
    bt = gdb_bt(v.exe, core["path"])
    assert " main (" in bt, bt
    v.cmd("p")
    r = daemon.ctl("snap", "999999999", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "999999999" in r.stderr, r


def test_retention_max_use_removes_oldest(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims(touch_mib=2)  # each core: a little over 2 MiB on disk
    daemon.start("--max-use", "5M")
    ids = []
    for _ in range(4):
        ids.append(json.loads(daemon.ctl("snap", str(v.pid), "--json").stdout)["id"])
    cores = daemon.cores()
    kept = [c["id"] for c in cores]
    assert all(c["status"] == "complete" for c in cores)
    assert 1 <= len(kept) < 4 and kept == ids[-len(kept) :], (ids, kept)  # oldest removed
    assert sum(int(c["disk_bytes"]) for c in cores) <= 5 << 20
    left = set(os.listdir(daemon.state / "cores"))
    assert left == {os.path.basename(c["path"]) for c in cores}, left
    v.cmd("p")


def test_pause_cancels_pending_repeat_cores(daemon: DaemonHarness, victims: Victims) -> None:
    """`ctl pause` stops every dump at once: repeat cores not taken yet are dropped, and do
    not come back on resume. A 100 ms timer rule that never takes a core (inactive window)
    serves as the clock: its suppressed firings show how much time the daemon has seen."""
    v = victims()
    # 3 s apart: the pause surely lands before the second is due, even on a loaded machine
    action = "  core:\n    repeat: 3\n    interval: 3s\n"
    daemon.write_rule("rep.yaml", syscall_rule("rep", v.pid, action=action))
    daemon.write_rule("clock.yaml", clock_rule(v.pid))
    daemon.start()
    v.cmd("g 1")
    wait_for(lambda: len(daemon.complete("rep")) == 1, 20, "the first of the repeat cores")
    daemon.ctl("pause")

    def ticks(reason: str) -> int:
        return int(daemon.rule("clock")["suppressed"].get(reason, 0))

    wait_for(lambda: ticks("paused") >= 65, 30, "6.5 s of paused ticks (past both repeats' times)")
    daemon.ctl("resume")
    base = ticks("inactive")
    wait_for(lambda: ticks("inactive") >= base + 20, 20, "2 s of resumed ticks")
    wait_for(daemon.idle, 20, "no dump running")
    assert len(daemon.cores("--rule", "rep")) == 1, daemon.cores("--rule", "rep")
    v.cmd("p")


def test_daemon_wide_cap(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims()
    daemon.write_rule("a.yaml", syscall_rule("a", v.pid))
    daemon.write_rule("b.yaml", syscall_rule("b", v.pid, "write", when="errno == EPIPE"))
    daemon.start("--cores-per-hour", "2")
    fire_one_by_one(daemon, v, "a", 2)
    v.cmd("e 1")
    wait_for(lambda: daemon.rule("b")["seen"] == 1, 10, "rule b's firing")
    wait_for(daemon.idle, 20, "the dumps to finish")
    assert daemon.rule("a")["cores"] == 2 and daemon.rule("a")["suppressed"] == {}
    assert daemon.rule("b")["cores"] == 0 and daemon.rule("b")["suppressed"] == {"global_cap": 1}
    assert len(daemon.cores()) == 2
    v.cmd("p")


def test_pause_during_a_stop_kernel_storm_releases_every_target(
    daemon: DaemonHarness, victims: Victims
) -> None:
    """A stop: kernel firing admitted just before `ctl pause` is dropped from the queue: its
    target, stopped by the probe, must be resumed then and there. (The window is a few ms
    wide; these rounds rarely hit it, but every round checks that nothing was stranded.)"""
    v = victims()
    rule = syscall_rule(
        "storm", v.pid, action="  stop: kernel\n", limits="  max_cores: 10000\n  min_interval: 1ms\n"
    )
    daemon.write_rule("storm.yaml", rule)
    daemon.start()
    v.cmd("l 0")  # getppid() in a tight loop: stopped, dumped, resumed, again and again
    for i in range(4):
        wait_for(lambda: daemon.rule("storm")["cores"] > 0, 20, f"round {i}: cores being taken")
        daemon.ctl("pause")
        wait_for(daemon.idle, 20, f"round {i}: the dump in flight to finish")
        why = halted_why(v.pid)
        wait_for(lambda: halted_why(v.pid) is None, 5, f"round {i}: the victim to run ({why})")
        v.cmd("p", timeout=5)
        daemon.ctl("resume")


def test_full_disk_never_stops_the_daemon(daemon: DaemonHarness, victims: Victims, workdir: Path) -> None:
    """The state directory on a 48 MiB tmpfs, filled so that a core fits but the catalog may
    not be able to record it: each such core fails (and is said to), the daemon goes on."""
    state = workdir / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(state)], check=True)
    try:
        v = victims(touch_mib=20)
        # No reports: a report's sandboxed reader holds a removed core open, so its blocks came
        # back only when it finished, after the next filler was sized (then every core fit).
        daemon.start("--max-use", "100%", "--keep-free", "0", "--no-reports")
        first = json.loads(daemon.ctl("snap", str(v.pid), "--json").stdout)
        need = int(first["disk_bytes"])
        daemon.ctl("rm", str(first["id"]))
        filler = state / "filler"
        outcomes = set()
        # Slack past the core: too little for the core (the writer fails), for the catalog's
        # WAL growth (publish fails: this killed the daemon), or enough. 36-48 KiB here; from
        # less than the core itself, so that the writer surely fails once whatever the boundary.
        for slack in range(-(32 << 10), 68 << 10, 4 << 10):
            filler.unlink(missing_ok=True)
            vfs = os.statvfs(state)
            filler.write_bytes(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - need - slack))
            r = daemon.ctl("snap", str(v.pid), "--json", check=False)
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()
            if r.returncode == 0:
                outcomes.add("complete")
                daemon.ctl("rm", str(json.loads(r.stdout)["id"]))
            else:
                assert "Traceback" not in r.stderr, r.stderr
                outcomes.add("catalog" if "cannot record the core" in r.stderr else "write")
        assert outcomes == {"write", "catalog", "complete"}, outcomes
        filler.unlink()
        assert daemon.status()["failed"] >= 1
        assert daemon.ctl("snap", str(v.pid)).returncode == 0  # room again: cores again
        v.cmd("p")
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)
