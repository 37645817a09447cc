"""The real daemon's control socket: outsiders are refused, members of group snapd may read
but not mutate."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from snapd.core.inspect import read_core
from support.daemon import DaemonHarness, Victims
from support.statedir import pending_rows
from support.victims import Victim, build_victim
from support.waiting import scaled, wait_for

pytestmark = pytest.mark.kernel

NOBODY = 65534


def ctl_as(daemon: DaemonHarness, groups: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SNAPD_SOCKET"}
    return subprocess.run(
        [*daemon.snapd_cmd, "ctl", "--socket", daemon.socket, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        user=NOBODY,
        group=NOBODY,
        extra_groups=groups,
    )


def test_socket_access(daemon: DaemonHarness, victims: Victims) -> None:
    try:
        gid = grp.getgrnam("snapd").gr_gid
    except KeyError:
        pytest.skip("no group 'snapd' on this system (scripts/setup.sh creates it)")
    v = victims()
    os.chmod(os.path.dirname(daemon.socket), 0o755)  # let others reach the socket file itself
    daemon.start()
    st = os.stat(daemon.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0 and st.st_gid == gid
    daemon.ctl("snap", str(v.pid))

    r = ctl_as(daemon, [], "list-cores")
    assert r.returncode == 1 and "permission denied" in r.stderr and "Traceback" not in r.stderr, r

    r = ctl_as(daemon, [gid], "list-cores", "--json")
    assert r.returncode == 0, r
    assert [c["pid"] for c in json.loads(r.stdout)] == [v.pid]
    assert ctl_as(daemon, [gid], "status").returncode == 0
    for args in (["pause"], ["snap", str(v.pid)], ["rm", "1"]):
        r = ctl_as(daemon, [gid], *args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r)
    assert daemon.status()["paused"]["paused"] is False
    assert len(daemon.cores()) == 1
    v.cmd("p")


def test_ctl_snap_takes_the_snapshot_mode_and_content(daemon: DaemonHarness, victims: Victims) -> None:
    """`snapd ctl snap --snapshot --content` as `snapd gcore` takes them; a bad mode is one line."""
    v = victims(96)  # above auto's fork threshold
    daemon.start()
    for mode, want in (("frozen", "frozen"), ("fork", "fork"), (None, "fork")):
        args = ["snap", str(v.pid), "--json", "--content", "anon+stack"]
        r = daemon.ctl(*args, *(["--snapshot", mode] if mode else []), timeout=120)
        core = json.loads(r.stdout)
        assert core["snapshot"] == want and core["content"] == "anon+stack", (mode, core)
    r = daemon.ctl("snap", str(v.pid), "--snapshot", "sideways", check=False)
    assert r.returncode != 0 and "invalid choice" in r.stderr, r
    v.cmd("p")


def test_info_shows_the_command_line_the_core_holds(daemon: DaemonHarness) -> None:
    """A process that rewrites its command line (setproctitle) between the event and the halt:
    `ctl info` shows the command line of the moment the core shows (its NT_PRPSINFO), not the
    one read when the dump was queued."""
    v = Victim([str(build_victim("retitle")), "0" * 12])
    try:
        daemon.start()
        out = json.loads(daemon.ctl("snap", str(v.pid), "--json").stdout)
        assert out["status"] == "complete", out
        info = json.loads(daemon.ctl("info", str(out["id"]), "--json").stdout)
        core = read_core(info["path"])
    finally:
        v.kill()
    argv = info["cmdline"]
    assert len(argv) == 2 and argv[1].isdigit() and len(argv[1]) == 12, argv
    assert core.psargs == " ".join(argv)[:79], (core.psargs, argv)


def test_status_says_idle_only_once_the_core_is_recorded(daemon: DaemonHarness, victims: Victims) -> None:
    """`ctl status` answered between the dumper's result and its publication said idle while
    the core's row was still 'pending': a script that waits for idle and then lists found the
    core missing. Idle must mean recorded. Polled as fast as the socket answers, three dumps."""
    v = victims(32)
    daemon.start()
    db = daemon.state / "catalog.db"
    for _ in range(3):
        with ThreadPoolExecutor(1) as pool:
            snap = pool.submit(daemon.ctl, "snap", str(v.pid), "--snapshot", "frozen", "--json", timeout=120)
            wait_for(lambda s=snap: not daemon.idle() or s.done(), 60, "the dump to start")
            deadline = time.monotonic() + scaled(120)
            while not daemon.idle():  # no pause between polls: the window is one loop turn
                assert time.monotonic() < deadline, "the dump did not end"
            assert pending_rows(db) == 0, daemon.cores()
            assert json.loads(snap.result().stdout)["status"] == "complete"
    v.cmd("p")
