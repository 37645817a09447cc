"""The morning report through the real daemon: a report per published core (rule cores and ctl
snap cores), computed after the target runs again, shown by `ctl info` and `ctl list-cores`;
a report that fails leaves its core listed; reports left unfinished run at the next start.
Each test provokes its event once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapd import procfs
from snapd.report.render import WAIT_WRAPPERS
from support.daemon import DaemonHarness, syscall_rule
from support.paths import VICTIMS
from support.proc import in_syscall
from support.redis import redis_command, redis_server, redis_socket
from support.victims import Victim
from support.waiting import scaled, wait_for

pytestmark = pytest.mark.kernel

REPORT_WAIT = scaled(120.0)  # a report takes about a second; the machine is shared
PY_SCRIPT = VICTIMS / "rpt_pyparked.py"


def info(daemon: DaemonHarness, core_id: int) -> dict[str, Any]:
    return json.loads(daemon.ctl("info", str(core_id), "--json").stdout)  # type: ignore[no-any-return]


def report_done(daemon: DaemonHarness, core_id: int) -> dict[str, Any]:
    """The entry once its report is complete or failed."""

    def done() -> dict[str, Any] | None:
        e = info(daemon, core_id)
        return e if e["report_status"] not in ("queued", "running") else None

    return wait_for(done, REPORT_WAIT, f"the report of core {core_id}")  # type: ignore[return-value]


def snap(daemon: DaemonHarness, pid: int) -> int:
    return int(json.loads(daemon.ctl("snap", str(pid), "--json").stdout)["id"])


def functions(thread: dict[str, Any]) -> list[str]:
    return [f["function"] for f in thread["frames"] if f["function"]]


def gdb_functions(exe: object, core: str) -> dict[int, set[str]]:
    """tid -> the function names ``gdb -batch -ex 'thread apply all bt'`` shows."""
    argv = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off", "-ex", "thread apply all bt"]
    out = subprocess.run([*argv, str(exe), core], capture_output=True, text=True, timeout=120).stdout
    traces: dict[int, set[str]] = {}
    tid = None
    for line in out.splitlines():
        if line.startswith("Thread ") and "LWP " in line:
            tid = int(line.split("LWP ")[1].split(")")[0])
            traces[tid] = set()
        elif line.startswith("#") and tid is not None:
            words = line.split()
            name = words[3] if len(words) > 3 and words[2] == "in" else words[1]
            traces[tid].add(name)
    return traces


def assert_after_the_freeze(e: dict[str, Any]) -> None:
    """The report was queued and started after the target was resumed (the freeze ended)."""
    freeze_end = e["info"]["started"] + e["info"]["freeze_seconds"]
    assert e["report_queued"] >= freeze_end, (e["report_queued"], freeze_end)
    assert e["report_started"] >= e["report_queued"]
    assert e["report_ended"] >= e["report_started"]


@pytest.fixture
def named_exe() -> Iterator[Callable[[str, str], Path]]:
    """named_exe(target, name): a symlink NAME -> TARGET in a directory of our own, so that a
    program nobody here wrote runs with a comm no other test's rules watch."""
    d = Path(tempfile.mkdtemp(prefix="snapd-mr-", dir="/tmp"))
    os.chmod(d, 0o755)

    def make(target: str, name: str) -> Path:
        link = d / name
        link.symlink_to(target)
        return link

    yield make
    shutil.rmtree(d, ignore_errors=True)


# -- a rule core: every thread, the firing one first ----------------------------------------------


def test_rule_core_report_every_thread_firing_first(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path]
) -> None:
    exe = compile_victim("mr_threads")
    v = spawn([exe])
    pid, beta = map(int, v.ready_line.split()[1:])
    tids = procfs.tids(pid)
    assert len(tids) == 4 and beta in tids
    wait_for(lambda: in_syscall(pid, pid, 0) and in_syscall(pid, beta, 0), what="main and beta in read(2)")
    daemon.write_rule("mr.yaml", syscall_rule("mr-getppid", pid, "getppid"))
    daemon.start()
    v.write(b"f\n")  # beta calls getppid(2) once
    (core,) = wait_for(lambda: daemon.complete("mr-getppid"), 30, "the core of the getppid rule")
    assert core["trigger"]["tid"] == beta
    e = report_done(daemon, core["id"])
    assert e["report_status"] == "complete", e["report_status"]
    assert_after_the_freeze(e)
    rep = e["report"]
    assert rep["error"] is None and not rep["truncated"]
    assert rep["threads"][0]["tid"] == beta
    assert [t["tid"] for t in rep["threads"] if t["firing"]] == [beta]
    assert sorted(t["tid"] for t in rep["threads"]) == tids

    # every thread's function, as gdb shows it, is in the report and in the text
    ours = {
        "mr_worker_alpha",
        "mr_worker_beta",
        "mr_worker_gamma",
        "mr_main_wait",
        "mr_park",
        "main",
        "start",
    }
    gdb = gdb_functions(exe, core["path"])
    assert sorted(gdb) == tids
    mine = {t["tid"]: set(functions(t)) for t in rep["threads"]}
    for tid, names in gdb.items():
        assert names & ours, (tid, names)
        assert names & ours <= mine[tid], (tid, names & ours, mine[tid])
    assert "mr_worker_beta" in mine[beta] and "mr_main_wait" in mine[pid]
    frame = next(
        f for t in rep["threads"] if t["tid"] == pid for f in t["frames"] if f["function"] == "mr_main_wait"
    )
    assert frame["module"] == str(exe) and frame["file"].endswith("mr_threads.c") and frame["line"] > 0
    assert isinstance(frame["pc"], int) and isinstance(frame["offset"], int)

    text = daemon.ctl("info", str(core["id"])).stdout
    blocks = [line for line in text.splitlines() if line.startswith("Stack trace of thread ")]
    assert blocks[0] == f"Stack trace of thread {beta} ({exe.name}) [fired the rule]:", blocks
    assert sorted(int(b.split()[4]) for b in blocks) == tids
    for name in ("mr_worker_alpha", "mr_worker_beta", "mr_worker_gamma", "mr_main_wait"):
        assert f" {name} ({exe.name} + 0x" in text, name
    assert f"Module {exe} with build-id " in text
    assert "       Report: complete" in text and "        Where: mr_worker_beta" in text
    assert text.index("Context at snapshot time:") < text.index("Stack trace of thread")

    # list-cores: WHERE is the victim's function, not the libc wrapper it waits in
    (row,) = [c for c in daemon.cores() if c["id"] == core["id"]]
    assert row["where"] == "mr_worker_beta" and row["report_status"] == "complete"
    assert row["where"] not in WAIT_WRAPPERS
    table = daemon.ctl("list-cores").stdout.splitlines()
    assert table[0].split() == ["ID", "TIME", "PID", "UID", "RULE", "COMM", "SIZE", "STATUS", "WHERE", "EXE"]
    (line,) = [x for x in table[1:] if x.split()[0] == str(core["id"])]
    assert line.split()[9] == "mr_worker_beta", line  # the WHERE column (TIME is two words)
    v.write(b"\n")  # still running, not halted
    assert daemon.status()["reports"]["complete"] == 1


# -- an on-demand core of CPython: Python frames ---------------------------------------------------


def test_ctl_snap_of_cpython_shows_python_frames(
    daemon: DaemonHarness, spawn: Callable[..., Victim], named_exe: Callable[[str, str], Path]
) -> None:
    python = named_exe(os.path.realpath("/usr/bin/python3"), "mr_python")
    v = spawn([python, PY_SCRIPT])
    main_tid, *workers = map(int, v.ready_line.split()[1:])
    wait_for(lambda: in_syscall(v.pid, main_tid, 34), what="main thread in pause(2), holding the GIL")
    daemon.start()
    core_id = snap(daemon, v.pid)
    e = report_done(daemon, core_id)
    assert e["report_status"] == "complete", e["report_status"]
    assert_after_the_freeze(e)
    rep = e["report"]
    assert not any(t["firing"] for t in rep["threads"])  # ctl snap: no thread fired a rule
    assert rep["gil"] == main_tid
    lines = PY_SCRIPT.read_text().splitlines()
    gil_line = next(i + 1 for i, t in enumerate(lines) if t.rstrip().endswith("# PARK gil"))
    main = next(t for t in rep["threads"] if t["tid"] == main_tid)
    assert main["python"][0] == {"function": "rpt_hold_gil", "file": str(PY_SCRIPT), "line": gil_line}
    parked = sorted(
        next(t for t in rep["threads"] if t["tid"] == w)["python"][0]["function"] for w in workers
    )
    assert parked == ["rpt_park_alpha", "rpt_park_beta", "rpt_park_beta"]
    assert e["where"] == f"rpt_hold_gil (rpt_pyparked.py:{gil_line})"

    text = daemon.ctl("info", str(core_id)).stdout
    assert f"Stack trace of thread {main_tid} (mr_python):" in text
    assert "Python stack, innermost first (holds the GIL):" in text
    assert f"    rpt_hold_gil ({PY_SCRIPT}:{gil_line})" in text
    assert "    rpt_park_alpha (" in text and "    rpt_middle (" in text


# -- a program nobody here wrote: redis-server, a rule on the rename(2) of SAVE --------------------


@pytest.fixture
def redis(named_exe: Callable[[str, str], Path], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    link = named_exe(os.path.realpath(exe), "mr-redis-server")
    d = workdir / "redis"
    d.mkdir()
    with redis_server(link, d) as proc:
        yield proc


def test_redis_rule_core_report(daemon: DaemonHarness, redis: subprocess.Popen[bytes], workdir: Path) -> None:
    daemon.write_rule("redis.yaml", syscall_rule("mr-redis-save", redis.pid, "rename"))
    daemon.start()
    sock = redis_socket(workdir / "redis")
    assert redis_command(sock, "SAVE") == b"+OK\r\n"  # rename(temp-N.rdb, dump.rdb)
    (core,) = wait_for(lambda: daemon.complete("mr-redis-save"), 30, "the core of the rename rule")
    e = report_done(daemon, core["id"])
    assert e["report_status"] == "complete", e["report_status"]
    assert_after_the_freeze(e)
    rep = e["report"]
    tids = procfs.tids(redis.pid)
    assert sorted(t["tid"] for t in rep["threads"]) == tids
    main = rep["threads"][0]
    assert main["tid"] == redis.pid and main["firing"]  # SAVE runs in the main thread
    assert "main" in functions(main) and e["where"] in functions(main)
    assert e["where"] not in WAIT_WRAPPERS and not e["where"].startswith("__")
    assert any("bioProcessBackgroundJobs" in functions(t) for t in rep["threads"])
    text = daemon.ctl("info", str(core["id"])).stdout
    assert f"Stack trace of thread {redis.pid} (mr-redis-server) [fired the rule]:" in text
    assert f"Module {os.path.realpath(shutil.which('redis-server') or '')} " in text
    assert redis_command(sock, "PING") == b"+PONG\r\n"  # it runs on


# -- a report that fails: the core stays listed and usable -----------------------------------------


@contextlib.contextmanager
def every_cpu_busy() -> Iterator[None]:
    """A busy loop at nice 0 pinned to each CPU we may use: a report worker, at nice 19, then
    gets about 1/70 of a CPU (sched(7): weight 15 against 1024), on any machine."""
    hogs = []
    try:
        for cpu in sorted(os.sched_getaffinity(0)):
            p = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
            hogs.append(p)
            os.sched_setaffinity(p.pid, {cpu})
        yield
    finally:
        for p in hogs:
            p.kill()
            p.wait()


def test_a_report_killed_by_its_deadline_leaves_the_core(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path]
) -> None:
    v = spawn([compile_victim("rpt_hostile")])  # cyclic frame pointers, a garbage stack
    daemon.start("--report-deadline", "0.3")
    with every_cpu_busy():  # the report, which yields to everything, cannot finish in 0.3 s
        core_id = snap(daemon, v.pid)
        e = report_done(daemon, core_id)
    assert e["status"] == "complete"
    assert e["report_status"].startswith("failed: timed out after 0.3 s"), e["report_status"]
    assert e["report"]["error"] and e["report"]["threads"] == []
    assert e["report_ended"] - e["report_started"] < scaled(10.0)
    assert [c["id"] for c in daemon.cores()] == [core_id]
    (row,) = daemon.cores()
    assert row["status"] == "complete" and row["where"] == "-"
    text = daemon.ctl("info", str(core_id)).stdout
    assert "       Report: failed: timed out after 0.3 s (killed)" in text
    assert "Stack trace of thread" not in text
    line = next(x for x in daemon.ctl("list-cores").stdout.splitlines() if x.startswith(f"{core_id} "))
    assert " complete " in line and " - " in line
    assert os.path.getsize(row["path"]) > 0  # usable: the file is there, gdb reads it
    bt = subprocess.run(["gdb", "-nx", "-batch", "-ex", "info threads", "-c", row["path"]],
                        capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert "Thread" in bt or "LWP" in bt, bt
    assert daemon.status()["reports"]["failed"] == 1


# -- reports left unfinished by a stopped daemon run at its next start -----------------------------


def test_an_interrupted_report_runs_at_the_next_start(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path]
) -> None:
    v = spawn([compile_victim("mr_threads")])
    daemon.start()
    core_id = snap(daemon, v.pid)
    first = report_done(daemon, core_id)
    assert first["report_status"] == "complete"
    assert daemon.stop() == 0
    # as a daemon killed mid-report leaves it: running, no report
    db = sqlite3.connect(daemon.state / "catalog.db")
    db.execute(
        "UPDATE reports SET status = 'running', report = NULL, ended = NULL WHERE core_id = ?", (core_id,)
    )
    db.commit()
    db.close()
    daemon.start()
    again = report_done(daemon, core_id)
    assert again["report_status"] == "complete" and again["report"]["threads"]
    assert again["report_started"] > first["report_ended"]
    assert "reports: 1 left unfinished by the previous daemon" in daemon.log_text()
