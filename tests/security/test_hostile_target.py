"""Hostile targets: a comm and command line full of terminal escape sequences and newlines, an
executable (with such a name) deleted after start, a process in another pid namespace. `snapd
gcore` and the daemon each give a good core or one clear error line, never a traceback, never a
halted target; `snapd inspect`, `snapd ctl list-cores` and `snapd ctl info` print the names
escaped (one line per row, no ESC/BEL/CR reaching the terminal).

Already proven with catalog entries made by hand (tests/ctl/test_ctl_commands.py::
test_hostile_strings_are_escaped): list-cores and info escape comm/exe/rule. Here the strings
come from real processes, through the real writer, catalog and daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from snapd import procfs
from support.daemon import DaemonHarness, DVictim, syscall_rule
from support.hostile import Hostile
from support.proc import children_of, halted_why
from support.waiting import wait_for

pytestmark = pytest.mark.kernel


EVIL_COMM = "\x1b[2J\x1b]0;x\x07\nA B"  # clear screen, set title, newline, space: 14 bytes
EVIL_FILE = "sec \x1b[31mred\x1b[0m\nx"  # an executable's file name
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202e]")  # what must never reach the terminal


def run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd="/")


def gcore_and_inspect(snapd: list[str], pid: int, out: Path) -> str:
    """`snapd gcore` then `snapd inspect`: a good core, printed safely; returns inspect's text."""
    r = run([*snapd, "gcore", "-o", str(out / "core"), str(pid)])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.strip().startswith(f"snapd gcore: {out}/core.{pid} dumped (frozen "), r.stdout
    assert halted_why(pid) is None
    r = run([*snapd, "inspect", str(out / f"core.{pid}")])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert not RAW.search(r.stdout), repr(r.stdout[:2000])
    header = r.stdout.splitlines()[0]
    assert f"core of pid {pid} (" in header and "1 thread(s)" in header, header
    j = json.loads(run([*snapd, "inspect", "--json", str(out / f"core.{pid}")]).stdout)
    assert j["pid"] == pid and len(j["threads"]) == 1
    return r.stdout


def host_pid_of_child(parent: int) -> int:
    def child() -> int | None:
        kids = children_of(parent)
        return kids[0] if kids else None

    return wait_for(child, 10, f"the child of {parent}")  # type: ignore[return-value]


def check_listed_safely(d: DaemonHarness, core_id: int) -> None:
    r = d.ctl("list-cores")
    assert not RAW.search(r.stdout), repr(r.stdout)
    assert len(r.stdout.splitlines()) == 1 + len(d.cores()), r.stdout
    r = d.ctl("info", str(core_id))
    assert not RAW.search(r.stdout), repr(r.stdout)


def test_hostile_targets(
    sec_daemon: DaemonHarness,
    hostile: Hostile,
    compile_victim: object,
    snapd_cmd: list[str],
    tmp_path: Path,
) -> None:
    d = sec_daemon
    exe = compile_victim("sec_hostile")  # type: ignore[operator]
    out = tmp_path / "out"
    out.mkdir()

    # 1. comm, argv and executable name made of escapes and newlines
    evil_exe = tmp_path / EVIL_FILE
    shutil.copy(exe, evil_exe)
    evil = hostile(EVIL_COMM, exe=evil_exe)
    assert procfs.read_bytes(f"/proc/{evil.pid}/comm") == EVIL_COMM.encode() + b"\n"
    text = gcore_and_inspect(snapd_cmd, evil.pid, out)
    assert "(\\x1b[2J\\x1b]0;x\\x07\\nA B)" in text  # comm, escaped
    assert "sec \\x1b[31mred\\x1b[0m\\nx" in text  # the file name of its mappings, escaped

    # 2. an executable deleted after start
    gone_exe = tmp_path / "gone"
    shutil.copy(exe, gone_exe)
    gone = hostile("gone", exe=gone_exe)
    gone_exe.unlink()
    text = gcore_and_inspect(snapd_cmd, gone.pid, out)
    assert f"{gone_exe} (deleted)" in text

    # 3. the init of another pid namespace (it sees itself as pid 1)
    ns = hostile("nsvictim", prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    assert ns.victim.ready_line == "ready 1"
    inner = host_pid_of_child(ns.pid)
    assert procfs.comm(inner) == "nsvictim"
    gcore_and_inspect(snapd_cmd, inner, out)
    ns_victim = DVictim(ns.victim, exe)  # its stdin/stdout are the unshare process's
    ns_victim.pid = inner

    # The daemon: a rule on each (by host pid), fired from inside; and on-demand snaps.
    targets = {"evil": evil, "gone": gone, "ns": ns_victim}
    for name, v in targets.items():
        d.write_rule(f"{name}.yaml", syscall_rule(name, v.pid))
    d.start()
    for name, v in targets.items():
        v.cmd("g 1")
        (core,) = wait_for(lambda name=name: d.complete(name), 30, f"the core of {name}")
        assert core["pid"] == v.pid
        assert halted_why(v.pid) is None
        r = run([*snapd_cmd, "inspect", core["path"]])
        assert r.returncode == 0 and not RAW.search(r.stdout), r.stderr
        check_listed_safely(d, core["id"])
        snap = d.ctl("snap", str(v.pid), "--json", timeout=120)
        assert json.loads(snap.stdout)["status"] == "complete"
        v.cmd("p")
    by_rule = {c["rule"]: c for c in d.cores()}
    assert by_rule["evil"]["comm"] == EVIL_COMM
    assert by_rule["gone"]["exe"] == f"{gone_exe} (deleted)"
    assert by_rule["ns"]["pid"] == inner
    # one clear error for a pid that is not there (or gone), no traceback
    r = d.ctl("snap", "4194304", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = run([*snapd_cmd, "gcore", "-o", str(out / "x"), "4194304"])
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
