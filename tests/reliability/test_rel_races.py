"""Fault 2: the target exits, execs or forks in the middle of a dump, and threads are born and die
while they are being halted. Each dump ends in a good core or a clean one-line error; never a
stopped target, never a partial file, never a leftover snapshot child."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd import procfs
from snapd.core import write_core
from support.cores import elf_segments
from support.daemon import DaemonHarness, Victims
from support.proc import child_states, halted_why, pids_of_exe
from support.rng import seeded_rng
from support.statedir import check_listing, integrity, partials, pending_rows
from support.victims import Victim
from support.waiting import scaled, wait_for

pytestmark = pytest.mark.kernel

GONE = ("exited", "no such process", "is a zombie")


def stopped_children(pid: int) -> list[int]:
    return [c for c, state in child_states(pid).items() if state in ("T", "t")]


def gcore(snapd_cmd: list[str], out: Path, pid: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*snapd_cmd, "gcore", "--snapshot", mode, "-o", str(out), str(pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def judge(p: subprocess.Popen[str], core: Path, where: str, allow_gone: bool = True) -> str:
    """'core' for a whole core, 'gone' for the clean "it exited" error; anything else fails."""
    _out, err = p.communicate(timeout=60)
    assert "Traceback" not in err, f"{where}: {err}"
    if p.returncode == 0:
        elf_segments(str(core))
        return "core"
    assert p.returncode == 1, f"{where}: exit {p.returncode}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapd gcore: "), f"{where}: {err!r}"
    assert allow_gone and any(g in lines[0] for g in GONE), f"{where}: {err!r}"
    assert not core.exists(), f"{where}: a failed dump left {core}"
    return "gone"


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_gcore_target_exits_mid_dump(
    how: str,
    spawn: Callable[..., Victim],
    compile_victim: Callable[..., Path],
    snapd_cmd: list[str],
    tmp_path: Path,
) -> None:
    rng, seed = seeded_rng(f"exit-{how}")
    exe = compile_victim("bigmem")
    results: dict[str, int] = {}
    for i in range(8):
        mode = ("frozen", "fork")[i % 2]
        v = spawn([exe, 384, 384])
        p = gcore(snapd_cmd, tmp_path / f"core{i}", v.pid, mode)
        # The dump has begun once its temp file exists (polled every ms); then a random moment.
        deadline = time.monotonic() + scaled(30)
        while not partials(tmp_path) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.15))
        if how == "sigkill":
            os.kill(v.pid, signal.SIGKILL)
        else:
            assert v.proc.stdin is not None
            v.proc.stdin.write(b"q")  # exit(0) as soon as it runs again
            v.proc.stdin.flush()
        where = f"seed {seed} round {i} ({mode}, {how})"
        r = judge(p, tmp_path / f"core{i}.{v.pid}", where)
        results[f"{mode}:{r}"] = results.get(f"{mode}:{r}", 0) + 1
        v.proc.wait(10)
        assert not partials(tmp_path), f"{where}: {os.listdir(tmp_path)}"
        # The fork snapshot's child dies with the dump (PTRACE_O_EXITKILL, SIGKILL and wait).
        wait_for(lambda: not pids_of_exe(exe), 5, f"{where}: no process of {exe.name} left")
        for f in tmp_path.glob("core*"):
            f.unlink()
    print(f"\nseed {seed} target {how} mid-dump: {results}")


def test_gcore_target_execs_mid_dump(
    spawn: Callable[..., Victim], compile_victim: Callable[..., Path], snapd_cmd: list[str], tmp_path: Path
) -> None:
    v = spawn([compile_victim("rel_exec"), 96, 40])  # execs every ~40 ms (+ 96 MiB touched)
    results: dict[str, int] = {}
    for i in range(12):
        mode = ("frozen", "fork")[i % 2]
        core = tmp_path / f"core{i}.{v.pid}"
        p = gcore(snapd_cmd, tmp_path / f"core{i}", v.pid, mode)
        _out, err = p.communicate(timeout=60)
        where = f"round {i} ({mode})"
        assert "Traceback" not in err, f"{where}: {err}"
        if p.returncode == 0:
            elf_segments(str(core))
            results[f"{mode}:core"] = results.get(f"{mode}:core", 0) + 1
            core.unlink()
        else:
            lines = err.strip().splitlines()
            assert p.returncode == 1 and len(lines) == 1, f"{where}: {p.returncode} {err!r}"
            assert not core.exists()
            results[f"{mode}:{lines[0]}"] = results.get(f"{mode}:{lines[0]}", 0) + 1
        assert not partials(tmp_path), where
        wait_for(lambda: halted_why(v.pid) is None, 5, f"{where}: the victim to run ({halted_why(v.pid)})")
        assert v.alive()
    # mid-exec the cmdline can read empty (the new mm's args are not set up yet): read it whole
    args = wait_for(lambda: (a := procfs.cmdline(v.pid).split(b"\0")) and len(a) > 3 and a, 10, "its cmdline")
    gen = int(args[3] or b"0")
    print(f"\nexec mid-dump: {results}; the victim exec'd {gen} times")
    assert gen > 12  # it did exec all along
    assert sum(n for k, n in results.items() if k.endswith(":core")) >= 6, results


def test_gcore_target_forks_mid_dump(
    spawn: Callable[..., Victim], compile_victim: Callable[..., Path], snapd_cmd: list[str], tmp_path: Path
) -> None:
    v = spawn([compile_victim("rel_fork"), 128])
    for i in range(8):
        mode = ("frozen", "fork")[i % 2]
        core = tmp_path / f"core{i}.{v.pid}"
        p = gcore(snapd_cmd, tmp_path / f"core{i}", v.pid, mode)
        assert judge(p, core, f"round {i} ({mode})", allow_gone=False) == "core"
        core.unlink()
        assert not partials(tmp_path)
        wait_for(lambda: halted_why(v.pid) is None, 5, f"round {i}: the victim to run")
        assert not stopped_children(v.pid), f"round {i}: a child of the victim is left stopped"


def test_threads_born_and_dying_while_halting(
    spawn: Callable[..., Victim], compile_victim: Callable[..., Path], tmp_path: Path
) -> None:
    """tests/victims/churn.c: two threads creating and joining threads as fast as they can."""
    v = spawn([compile_victim("churn")])
    threads = []
    for i in range(40):
        mode = ("frozen", "fork")[i % 2]
        out = tmp_path / f"core{i}"
        info = write_core(v.pid, str(out), snapshot=mode, content="default", sync=False)
        threads.append(info.threads)
        elf_segments(str(out))
        out.unlink()
        why = halted_why(v.pid)
        wait_for(lambda: halted_why(v.pid) is None, 5, f"round {i}: churn to run ({why})")
    assert not partials(tmp_path)
    print(f"\nchurn: 40 dumps, thread counts seen {sorted(set(threads))}")


# --- the same through the daemon --------------------------------------------------------------


def comm_rule(name: str, comm: str, syscall: str, snapshot: str, max_cores: int = 100) -> str:
    return (
        f'name: {name}\ntarget:\n  comm: "{comm}"\ntrigger:\n  syscall: {syscall}\n'
        f"action:\n  snapshot: {snapshot}\n"
        f"limits:\n  max_cores: {max_cores}\n  min_interval: 1ms\n"
    )


def reaped(v: Victim, daemon: DaemonHarness, timeout: float = 30.0) -> None:
    """Wait for the SIGKILLed ``v`` to be reaped. A zombie that is traced reaches its parent
    only once its tracer (the daemon's dumper) has waited for it (kernel/exit.c
    wait_task_zombie), so a late reap names the tracer and what the daemon said."""
    try:
        v.proc.wait(scaled(timeout))
    except subprocess.TimeoutExpired:
        status = procfs.status(v.pid) if os.path.exists(f"/proc/{v.pid}") else {}
        tracer = status.get("TracerPid", "?")
        raise AssertionError(
            f"victim {v.pid} not reaped in {scaled(timeout):.0f} s: state {status.get('State')}, "
            f"tracer {tracer}; daemon log:\n{daemon.log_text()[-4000:]}"
        ) from None


def test_daemon_targets_exit_exec_fork_mid_dump(
    daemon: DaemonHarness,
    victims: Victims,
    spawn: Callable[..., Victim],
    compile_victim: Callable[..., Path],
) -> None:
    rng, seed = seeded_rng("daemon-races")
    big = compile_victim("bigmem")
    big_fork = compile_victim("bigmem", "-DREL_FORK_SNAPSHOT")  # same program, another comm
    execer = compile_victim("rel_exec")
    forker = compile_victim("rel_fork")
    daemon.write_rule("x1.yaml", comm_rule("exit-frozen", big.name, "write", "frozen"))
    daemon.write_rule("x2.yaml", comm_rule("exit-fork", big_fork.name[:15], "write", "fork"))
    # Fire at the execve(2) and clone(2) entries themselves: the dump races the exec / fork.
    daemon.write_rule("x3.yaml", comm_rule("exec", execer.name, "execve", "frozen", 6))
    daemon.write_rule("x4.yaml", comm_rule("fork", forker.name, "clone", "fork", 6))
    daemon.start("--cores-per-hour", "100000", "--max-use", "2G")
    cores_dir = daemon.state / "cores"

    for i in range(6):
        exe = (big, big_fork)[i % 2]
        v = spawn([exe, 128, 128])
        assert v.proc.stdin is not None
        v.proc.stdin.write(b"c")  # its write(2) fires the rule
        v.proc.stdin.flush()
        time.sleep(rng.uniform(0, 0.25))
        os.kill(v.pid, signal.SIGKILL)
        reaped(v, daemon)
    e = spawn([execer, 64, 60])
    f = spawn([forker, 64])
    wait_for(lambda: len(daemon.cores("--rule", "exec")) >= 4, 60, "cores of the exec'ing victim")
    wait_for(lambda: len(daemon.cores("--rule", "fork")) >= 4, 60, "cores of the forking victim")
    daemon.write_rule("x3.yaml", comm_rule("exec", "nothing-matches", "execve", "frozen"))
    daemon.write_rule("x4.yaml", comm_rule("fork", "nothing-matches", "clone", "fork"))
    # The daemon sees the rewrites by inotify, in its own time; until then both rules fire, so
    # an idle moment between two dumps is not the end. The reload puts them in force when it
    # returns. Idle then means every core's row has left 'pending' (asserted below).
    daemon.ctl("reload")
    wait_for(daemon.idle, 60, "the daemon to be idle")
    db = daemon.state / "catalog.db"
    for x in (e, f):
        why = halted_why(x.pid)
        wait_for(lambda x=x: halted_why(x.pid) is None, 5, f"victim {x.pid} to run ({why})")
        assert x.alive()
    assert not stopped_children(f.pid)
    listing = daemon.cores()
    check_listing(listing, cores_dir)
    assert not partials(cores_dir)
    assert pending_rows(db) == 0
    assert integrity(db) == "ok"
    summary: dict[str, dict[str, int]] = {}
    for c in listing:
        status = c["status"] if c["status"] == "complete" else "failed"
        summary.setdefault(c["rule"], {}).setdefault(status, 0)
        summary[c["rule"]][status] += 1
        if c["status"] != "complete":
            assert any(g in c["status"] for g in GONE), c["status"]
    print(f"\nseed {seed} daemon races: {summary}")
    log = daemon.log_text()
    assert "Traceback" not in log and "internal error" not in log, log
    assert daemon.proc is not None and daemon.proc.poll() is None
