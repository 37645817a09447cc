"""Fork snapshots: equivalent to a frozen core, invisible to the target, safe fallbacks."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from snapd.core import write_core
from snapd.core.inspect import read_core
from support.cores import byte_at, ready_addrs
from support.gdb import gdb
from support.proc import children_of, thread_states
from support.waiting import wait_for

pytestmark = pytest.mark.kernel


def u64_at(path: Path, addr: int) -> int:
    core = read_core(str(path))
    return int(struct.unpack("<Q", b"".join(byte_at(path, core, addr + i) for i in range(8)))[0])


def ask(v, cmd: bytes) -> str:
    v.proc.stdin.write(cmd)
    v.proc.stdin.flush()
    return v.proc.stdout.readline().decode().strip()


def no_children(pid: int) -> bool:
    return children_of(pid) == []


@pytest.mark.parametrize("mode", ["frozen", "fork"])
@pytest.mark.lane
def test_consistent_moment(compile_victim, spawn, tmp_path, mode):
    """The counter and its far-away mirror agree: the core is one moment, not a smear, and that
    moment is the freeze (between the values read just before and just after)."""
    v = spawn([compile_victim("bigmem"), 512, 512])
    _, counter, mirror = (int(x, 16) for x in v.ready_line.split()[1:])
    wait_for(lambda: int(ask(v, b"c")) > 0, 10, "the counter thread to run")
    before = int(ask(v, b"c"))
    info = write_core(v.pid, str(tmp_path / "core"), snapshot=mode, sync=False)
    after = int(ask(v, b"c"))
    assert info.snapshot == mode and not info.fallback
    c, m = u64_at(tmp_path / "core", counter), u64_at(tmp_path / "core", mirror)
    assert abs(c - m) <= 1, (c, m)
    assert before <= c <= after, (before, c, after)
    if mode == "fork":
        assert info.freeze_seconds < info.elapsed_seconds / 2  # copied after the resume


@pytest.mark.parametrize("mode", ["frozen", "fork"])
@pytest.mark.lane
def test_readers_read_fork_core_fully(compile_victim, spawn, snapd_cmd, tmp_path, mode):
    exe = compile_victim("threads")
    v = spawn([exe])
    r = subprocess.run(
        [*snapd_cmd, "gcore", "--snapshot", mode, "-o", str(tmp_path / "core"), str(v.pid)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    core = tmp_path / f"core.{v.pid}"
    out = gdb(exe, core, "thread apply all bt", "print/x snapd_global", "thread apply all print snapd_tls")
    for fn in ("worker_alpha", "worker_beta", "worker_gamma", "main_wait"):
        assert f"in {fn} ()" in out, out
    assert "0x5eed5eed" in out
    assert out.count("= 100") == 4  # TLS 1000..1003
    es = subprocess.run(["eu-stack", "--core", str(core), "-e", str(exe)], capture_output=True, text=True)
    assert es.stdout.count("TID ") == 4 and "worker_gamma" in es.stdout, es.stderr
    drgn = subprocess.run(
        [
            sys.executable,
            "-c",
            "import drgn,sys; p=drgn.Program(); p.set_core_dump(sys.argv[1]);\n"
            "try: p.load_default_debug_info()\nexcept drgn.MissingDebugInfoError: pass\n"
            "print(len(list(p.threads())), hex(p['snapd_global'].value_()))",
            str(core),
        ],
        capture_output=True,
        text=True,
    )
    assert drgn.stdout.split() == ["4", "0x5eed5eed"], drgn.stderr
    assert read_core(str(core)).snapd["snapshot"] == mode


@pytest.mark.parametrize("where", ["read", "sleep"])
def test_invisible_to_the_target(compile_victim, spawn, tmp_path, where):
    """No child, no SIGCHLD, no zombie, no fd held; the interrupted read()/nanosleep() in the
    injected (main) thread goes on as if nothing happened."""
    r, w = os.pipe()
    v = spawn([compile_victim("invisible"), where, "none", w], pass_fds=(w,))
    os.close(w)
    for _ in range(3):
        info = write_core(v.pid, str(tmp_path / "core"), snapshot="fork", sync=False)
        assert info.snapshot == "fork", info.fallback
        assert no_children(v.pid)
        assert not [s for s in thread_states(v.pid).values() if s in "TtZ"]
    assert ask(v, b"w") == "ECHILD"  # (in read mode, this command is read by the restarted read)
    assert ask(v, b"s") == "0"
    if where == "sleep":  # the injected nanosleep() has come back since: it would have counted
        naps = int(ask(v, b"n"))
        wait_for(lambda: int(ask(v, b"n")) >= naps + 2, 10, "the sleeping thread to go round")
    assert ask(v, b"e") == "0"  # no read()/nanosleep() failed
    assert ask(v, b"c") == "closed"
    os.set_blocking(r, True)
    assert os.read(r, 1) == b""  # EOF: nobody else holds the write end
    os.close(r)


def test_dontfork_and_wipeonfork_have_real_contents(compile_victim, spawn, tmp_path):
    v = spawn([compile_victim("content"), tmp_path / "f.dat"])
    a = ready_addrs(v.ready_line)
    info = write_core(v.pid, str(tmp_path / "core"), snapshot="fork", sync=False)
    assert info.snapshot == "fork"
    core = read_core(str(tmp_path / "core"))
    assert byte_at(tmp_path / "core", core, a["dontfork"] + 5) == b"K"
    assert byte_at(tmp_path / "core", core, a["wipe"] + 5) == b"W"
    assert byte_at(tmp_path / "core", core, a["anon"] + 5) == b"A"
    # shared mappings were copied live, and the core says so
    assert core.snapd["shared_live"]


@pytest.mark.parametrize(("filt", "forks"), [("seccomp-kill-clone", False), ("seccomp-kill-ptrace", True)])
def test_seccomp_filter_is_evaluated(compile_victim, spawn, snapd_cmd, tmp_path, filt, forks):
    """A filter that would kill on clone means frozen mode (and a live target); one that
    does not care about clone lets the fork happen."""
    v = spawn([compile_victim("invisible"), "read", filt])  # (no pipe: fd 3 is not used)
    r = subprocess.run(
        [*snapd_cmd, "gcore", "--snapshot", "fork", "-o", str(tmp_path / "core"), str(v.pid)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    mode = read_core(str(tmp_path / f"core.{v.pid}")).snapd["snapshot"]
    if forks:
        assert mode == "fork" and r.stderr == ""
    else:
        assert mode == "frozen"
        assert r.stderr.strip() == (
            f"snapd gcore: warning: pid {v.pid}: no fork snapshot: a seccomp filter "
            "would answer clone() with KILL_PROCESS; dumped in frozen mode"
        )
    assert v.alive() and ask(v, b"w") == "ECHILD"


def test_rlimit_nproc_exhausted_falls_back(compile_victim, spawn, tmp_path):
    exe = compile_victim("invisible")  # its directory is world-readable: nobody can run it

    def as_nobody_with_nproc_1() -> None:
        os.setgid(65534)
        os.setgroups([])
        os.setuid(65534)
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))

    v = spawn([exe, "read"], preexec_fn=as_nobody_with_nproc_1)
    info = write_core(v.pid, str(tmp_path / "core"), snapshot="fork", sync=False)
    assert info.snapshot == "frozen"
    assert info.fallback == "clone() failed in the target (EAGAIN: RLIMIT_NPROC or pids.max reached)"
    assert v.alive() and ask(v, b"w") == "ECHILD" and no_children(v.pid)
    v.kill()


class _Stop(Exception):
    """What our SIGTERM handler raises: a Python program's ^C or kill, mid-dump."""


def zombie_children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                data = Path(f"/proc/{d}/stat").read_bytes()
            except OSError:
                continue
            f = data[data.rindex(b")") + 2 :].split()
            if f[0] == b"Z" and int(f[1]) == pid:
                out.append(int(d))
    return out


def test_sigterm_during_the_injected_clone_leaves_the_target_whole(compile_victim, spawn, tmp_path):
    """A SIGTERM that lands while the clone is injected (the thread holding our registers) is
    held until the thread is restored: the target runs on as if nothing happened, the snapshot
    child is disposed of, and the signal still reaches the program (here, as an exception)."""
    import signal

    from snapd.freeze import inject

    v = spawn([compile_victim("bigmem"), 64, 64])
    wait_for(lambda: int(ask(v, b"c")) > 0, 10, "the counter thread to run")

    def stop(signum, frame):
        raise _Stop

    def kill_me(tid: int, nr: int) -> None:
        if nr == inject.NR_CLONE:
            os.kill(os.getpid(), signal.SIGTERM)

    # A thread that leaves SIGTERM unblocked, as the writer's copy threads of an earlier dump
    # do: the kernel hands it the process-directed signal (signal(7)), and Python runs the
    # handler in the main thread whatever that thread's mask says.
    import threading

    idle = threading.Event()
    other = threading.Thread(target=idle.wait, daemon=True)
    other.start()
    old = signal.signal(signal.SIGTERM, stop)
    inject.on_call_entered = kill_me
    try:
        with pytest.raises(_Stop):
            write_core(v.pid, str(tmp_path / "core"), snapshot="fork", sync=False)
    finally:
        inject.on_call_entered = None
        signal.signal(signal.SIGTERM, old)
        idle.set()
        other.join()
    assert v.alive(), v.exit_status()
    assert int(ask(v, b"c")) > 0  # its read() of stdin returned what it read, not our clone's pid
    states = set(thread_states(v.pid).values())
    assert states and not states & {"t", "T"}, states
    assert zombie_children(v.pid) == []
    assert os.listdir(tmp_path) == []  # no core, no partial file
