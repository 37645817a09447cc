"""`snapd ctl` end to end as root: the real CLI over a real socket to a real CtlServer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.ctl.client import Client, format_cores, parse_since, safe
from snapd.ctl.protocol import CtlError
from support.ctl import Served, take

Run = Callable[..., subprocess.CompletedProcess[str]]
REQUIRED = {"id", "path", "rule", "pid", "comm", "exe", "time", "size", "disk_bytes", "trigger", "status"}


def test_list_cores_json_and_table(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    a = take(s.catalog, rule="slow-open", pid=11)
    b = take(s.catalog, rule="oom", pid=22, uid=1000)
    r = ctl(s.path, "list-cores", "--json")
    assert r.returncode == 0, r.stderr
    cores = json.loads(r.stdout)
    assert [c["id"] for c in cores] == [a.id, b.id]
    for c in cores:
        assert set(c) >= REQUIRED, set(c)
    assert cores[0]["trigger"] == {"syscall": "openat", "ret": -13}
    assert cores[1]["path"] == b.path and cores[1]["status"] == "complete"

    r = ctl(s.path, "list-cores")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "TIME", "PID", "UID"]
    assert len(lines) == 3 and "slow-open" in lines[1] and "oom" in lines[2]
    assert "/usr/bin/victim" in lines[1]


def test_list_filters(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    old = take(s.catalog, rule="a", pid=1, now=time.time() - 7200)
    new = take(s.catalog, rule="b", pid=2)

    def ids(*args: str) -> list[int]:
        r = ctl(s.path, "list-cores", "--json", *args)
        return [c["id"] for c in json.loads(r.stdout)]

    assert ids("--rule", "a") == [old.id]
    assert ids("--pid", "2") == [new.id]
    assert ids("--since", "1h") == [new.id]
    assert ids("--since", "@0") == [old.id, new.id]
    r = ctl(s.path, "list-cores", "--since", "whenever")
    assert r.returncode == 1 and "--since" in r.stderr and "Traceback" not in r.stderr


def test_no_cores_found(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    r = ctl(s.path, "list-cores")
    assert r.returncode == 1
    assert "No cores found." in r.stderr
    r = ctl(s.path, "list-cores", "--json")
    assert r.returncode == 1 and json.loads(r.stdout) == []


def test_hostile_strings_are_escaped(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    evil = "\x1b]0;pwned\x07\nID  TIME FAKE-ROW\r\u202e"
    take(s.catalog, comm=evil, exe="/tmp/\x1b[2Jx\ny", rule="r\nx")
    r = ctl(s.path, "list-cores")
    assert r.returncode == 0
    assert "\x1b" not in r.stdout and "\r" not in r.stdout and "\u202e" not in r.stdout
    assert len(r.stdout.splitlines()) == 2, r.stdout
    assert "\\x1b]0;pwned\\x07\\nID" in r.stdout
    r = ctl(s.path, "info", "1")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "FAKE-ROW" in r.stdout
    assert all(not line.startswith("ID  TIME") for line in r.stdout.splitlines())


def test_info_rm(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    e = take(
        s.catalog,
        context={
            "limits": [{"name": "Max open files", "soft": "1024", "hard": "4096"}],
            "fds": [{"fd": 3, "target": "/var/log/app.log"}],
            "fds_total": 1,
        },
    )
    r = ctl(s.path, "info", str(e.id))
    assert r.returncode == 0, r.stderr
    assert e.path in r.stdout and "Max open files" in r.stdout and "/var/log/app.log" in r.stdout
    r = ctl(s.path, "info", str(e.id), "--json")
    assert json.loads(r.stdout)["context"]["fds_total"] == 1
    r = ctl(s.path, "info", "999")
    assert r.returncode == 1 and "no core with id 999" in r.stderr
    r = ctl(s.path, "rm", str(e.id))
    assert r.returncode == 0 and f"removed core {e.id}" in r.stdout
    assert not os.path.exists(e.path)
    assert ctl(s.path, "rm", str(e.id)).returncode == 1


def test_pause_resume_reload_status_rules(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    r = ctl(s.path, "pause", "--reason", "dumps hurt")
    assert r.returncode == 0, r.stderr
    st = json.loads(ctl(s.path, "status", "--json").stdout)
    assert st["paused"] is True and st["pause_reason"] == "dumps hurt"
    assert s.handler.switch.paused, "persisted in the state dir"
    out = ctl(s.path, "status").stdout
    assert "paused: yes" in out
    assert ctl(s.path, "resume").returncode == 0
    assert json.loads(ctl(s.path, "status", "--json").stdout)["paused"] is False
    assert ctl(s.path, "reload").returncode == 0 and s.handler.reloads == 1
    r = ctl(s.path, "rules")
    assert r.returncode == 0 and "demo" in r.stdout and "NAME" in r.stdout


def test_snap_is_answered_later(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    s.handler.snap_gate.clear()
    p = subprocess.Popen(
        [*_snapd(), "ctl", "--socket", s.path, "snap", "4242", "--content", "anon"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # While the snapshot is "being written", the server keeps answering others.
        with Client(s.path, timeout=10) as c:
            assert c.call("status")["cores"] == 0
        s.handler.snap_gate.set()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert out.startswith("core 1: ") and "(complete)" in out
    [e] = s.catalog.list()
    assert e.pid == 4242 and e.content == "anon" and e.rule == "on-demand"
    r = ctl(s.path, "snap", "0")
    assert r.returncode == 1 and "pid 0" in r.stderr


def _snapd() -> list[str]:
    exe = shutil.which("snapd", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "snapd"]


@pytest.mark.skipif(shutil.which("gdb") is None or shutil.which("gcore") is None, reason="needs gdb")
@pytest.mark.kernel
def test_debug_starts_gdb_on_core(
    serve: Callable[..., Served], ctl: Run, spawn: Callable[..., object], tmp_path: Path
) -> None:
    s = serve()
    v = spawn(["sh", "-c", "echo ready; exec sleep 600"])
    prefix = tmp_path / "gc"
    subprocess.run(["gcore", "-o", str(prefix), str(v.pid)], check=True, capture_output=True, timeout=120)  # type: ignore[attr-defined]
    made = Path(f"{prefix}.{v.pid}")  # type: ignore[attr-defined]
    e = s.catalog.reserve(rule="r", pid=v.pid, comm="sleep", exe=shutil.which("sleep") or "/bin/sleep")  # type: ignore[attr-defined]
    os.link(made, e.path)
    made.unlink()
    from snapd.core.info import CoreInfo

    st = os.stat(e.path)
    info = CoreInfo(
        pid=e.pid,
        path=e.path,
        comm="sleep",
        exe=e.exe,
        threads=1,
        mappings=0,
        dumped_mappings=0,
        apparent_size=st.st_size,
        disk_bytes=st.st_blocks * 512,
        memory_bytes=0,
        content="default",
        snapshot="frozen",
        started=0,
        freeze_seconds=0,
        elapsed_seconds=0,
    )
    assert s.catalog.publish(e.id, info).complete
    r = ctl(s.path, "debug", str(e.id), "-A", "-batch -nx -ex 'info threads'", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Core was generated by `sleep" in r.stdout, r.stdout
    assert f"LWP {v.pid}" in r.stdout  # type: ignore[attr-defined]
    failed = s.catalog.reserve(rule="r", pid=1)
    s.catalog.fail(failed.id, "boom")
    r = ctl(s.path, "debug", str(failed.id))
    assert r.returncode == 1 and "nothing to debug" in r.stderr


CTL_DBG_VICTIM = """
import time
def ctl_dbg_victim_wait():
    print("ready", flush=True)
    time.sleep(600)
ctl_dbg_victim_wait()
"""


@pytest.mark.kernel
def test_debug_runs_drgn_and_pystack_from_snapds_own_environment(
    serve: Callable[..., Served], snapd_cmd: list[str], spawn: Callable[..., object]
) -> None:
    """drgn and pystack are Python packages installed beside snapd (its venv, not on PATH), and
    each has its own command line: `ctl debug --debugger pystack` ran `pystack EXE -c CORE` from
    PATH and failed with "pystack: not found; install gdb"."""
    from snapd.core import write_core

    s = serve()
    exe = os.path.realpath("/usr/bin/python3")
    v = spawn([exe, "-c", CTL_DBG_VICTIM])
    e = s.catalog.reserve(rule="r", pid=v.pid, comm="python3", exe=exe)  # type: ignore[attr-defined]
    assert s.catalog.publish(e.id, write_core(v.pid, e.path)).complete  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if k != "SNAPD_SOCKET"}
    env["PATH"] = "/usr/bin:/bin"  # snapd's venv is not on it, as with /usr/local/bin/snapd

    def debug(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*snapd_cmd, "ctl", "--socket", s.path, "debug", str(e.id), *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd="/",
        )

    r = debug("--debugger", "pystack")
    assert r.returncode == 0, r.stderr
    assert "ctl_dbg_victim_wait" in r.stdout, r.stdout
    r = debug("--debugger", "drgn", "-A", "-q -e 'print(\"tids\", [t.tid for t in prog.threads()])'")
    assert r.returncode == 0, r.stderr
    assert f"tids [{v.pid}]" in r.stdout, r.stdout  # type: ignore[attr-defined]
    r = debug("--debugger", "no-such-debugger-x")
    assert r.returncode == 1 and "no-such-debugger-x: not found on PATH" in r.stderr, r.stderr


def test_no_daemon(tmp_path: Path, ctl: Run) -> None:
    r = ctl(str(tmp_path / "none.sock"), "status")
    assert r.returncode == 1 and "no daemon socket there" in r.stderr and "Traceback" not in r.stderr


def test_helpers() -> None:
    assert safe("a\nb\x1b\\") == "a\\nb\\x1b\\\\"
    assert safe("\u202eabc") == "\\u202eabc"
    assert safe("café ok") == "café ok"
    now = 1_000_000.0
    assert parse_since("2h", now) == now - 7200
    assert parse_since("30min", now) == now - 1800
    assert parse_since("@12", now) == 12.0
    assert parse_since("2026-11-27T00:00:00Z", now) == 1795737600.0
    with pytest.raises(CtlError):
        parse_since("yesterday-ish", now)
    table = format_cores(
        [
            {
                "id": 1,
                "time": "2026-11-27T01:02:03.456Z",
                "pid": 1,
                "uid": 0,
                "rule": "r",
                "comm": "a\nb",
                "disk_bytes": 2048,
                "status": "complete",
                "exe": "/x",
            }
        ]
    )
    assert len(table.splitlines()) == 2 and "2.0K" in table and "a\\nb" in table


def test_metrics_and_upload_columns(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    r = ctl(s.path, "metrics")
    assert r.returncode == 0 and r.stdout.startswith("# HELP snapd_cores_total"), r.stdout + r.stderr
    plain = take(s.catalog, rule="plain", pid=1)
    assert "UPLOAD" not in ctl(s.path, "list-cores").stdout, "no column while nothing is uploaded"
    up = take(s.catalog, rule="up", pid=2)
    with s.catalog._db.tx() as db:  # the daemon's way is Catalog.publish(after=...)
        s.catalog.shipping.begin(db, up.id, "upload")
    with open(s.catalog.shipping.bundle_path(up.id), "wb") as f:
        f.write(b"bundle")
    assert s.catalog.shipping.queued(up.id, "fleet/h/2-core.snapd")
    s.catalog.shipping.save_upload_state(up.id, {"job": {}}, 3, "cannot reach http://x:1: refused")
    lines = ctl(s.path, "list-cores").stdout.splitlines()
    assert lines[0].split()[-2:] == ["UPLOAD", "EXE"], lines[0]
    assert lines[1].split()[-2:] == ["-", "/usr/bin/victim"], lines[1]
    assert "queued (retry 3)" in lines[2], lines[2]
    info = ctl(s.path, "info", str(up.id)).stdout
    assert "Upload: queued fleet/h/2-core.snapd (retry 3: cannot reach http://x:1: refused)" in info, info
    got = json.loads(ctl(s.path, "info", str(up.id), "--json").stdout)
    assert got["upload"]["state"] == "queued" and got["elf_cache"] == s.catalog.shipping.elf_cache_dir
    assert json.loads(ctl(s.path, "info", str(plain.id), "--json").stdout)["upload"] is None
    r = ctl(s.path, "export", str(up.id), "-o", os.path.join(s.catalog.state_dir, "x.snapd"))
    assert r.returncode == 1 and "not a valid ELF core" in r.stderr and "Traceback" not in r.stderr, r.stderr
