"""Every way a dump can be refused or fail: one clear line, non-zero exit, target untouched,
no file left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapd.core.calibrate import PARTIAL
from support.proc import proc_state, thread_states, tracer_of
from support.waiting import wait_for

pytestmark = pytest.mark.kernel


def run(snapd_cmd, *args, **kw):
    return subprocess.run(
        [*snapd_cmd, "gcore", *map(str, args)], capture_output=True, text=True, timeout=120, **kw
    )


def assert_clean_failure(r, pattern, directory):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]
    if directory is not None:
        assert [p.name for p in Path(directory).iterdir() if "core" in p.name or "partial" in p.name] == []


def assert_untouched(pid):
    states = thread_states(pid)
    assert not [s for s in states.values() if s in "Tt"], states
    assert tracer_of(pid) == 0


def test_no_such_pid(snapd_cmd, tmp_path):
    pid = 4_000_000  # above pid_max's ceiling (2^22)
    r = run(snapd_cmd, "-o", tmp_path / "core", pid)
    assert_clean_failure(r, rf"^snapd gcore: pid {pid}: no such process$", tmp_path)


def test_not_a_pid(snapd_cmd, tmp_path):
    r = run(snapd_cmd, "-o", tmp_path / "core", "abc")
    assert_clean_failure(r, r"'abc' is not a process id", tmp_path)


def test_kernel_thread(snapd_cmd, tmp_path):
    r = run(snapd_cmd, "-o", tmp_path / "core", 2)  # kthreadd
    assert_clean_failure(r, r"pid 2: 'kthreadd' is a kernel thread", tmp_path)


def test_zombie(snapd_cmd, tmp_path):
    p = subprocess.Popen(["true"])
    wait_for(lambda: proc_state(p.pid) == "Z", 10, "a zombie")
    try:
        r = run(snapd_cmd, "-o", tmp_path / "core", p.pid)
        assert_clean_failure(r, rf"pid {p.pid}: 'true' is a zombie", tmp_path)
    finally:
        p.wait()


TRACER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = int(sys.argv[1])
for t in os.listdir(f"/proc/{pid}/task"):
    assert libc.ptrace(0x4206, int(t), None, None) == 0, ctypes.get_errno()  # PTRACE_SEIZE
print("ready", flush=True)
sys.stdin.read()
"""


def test_already_traced_names_the_tracer(compile_victim, spawn, snapd_cmd, tmp_path):
    v = spawn([compile_victim("threads")])
    tracer = spawn([sys.executable, "-c", TRACER, v.pid])
    r = run(snapd_cmd, "-o", tmp_path / "core", v.pid)
    assert_clean_failure(
        r, rf"pid {v.pid}: already traced by pid {tracer.pid} \(python[^)]*\); detach it", tmp_path
    )
    tracer.kill()
    wait_for(lambda: tracer_of(v.pid) == 0, 10, "tracer gone")
    assert_untouched(v.pid)


def test_not_permitted_without_privilege(compile_victim, spawn, snapd_cmd, tmp_path):
    v = spawn([compile_victim("threads")])
    os.chmod(tmp_path, 0o777)

    def drop() -> None:
        os.setgid(65534)
        os.setgroups([])
        os.setuid(65534)

    r = run(snapd_cmd, "-o", tmp_path / "core", v.pid, preexec_fn=drop)
    assert_clean_failure(r, rf"pid {v.pid}: not permitted to .*run as root or with CAP_SYS_PTRACE", tmp_path)
    assert_untouched(v.pid)


def test_output_directory_missing(compile_victim, spawn, snapd_cmd, tmp_path):
    v = spawn([compile_victim("threads")])
    r = run(snapd_cmd, "-o", tmp_path / "nope" / "core", v.pid)
    assert_clean_failure(r, r"nope/core\.\d+: cannot write core: the directory does not exist", tmp_path)
    assert_untouched(v.pid)


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(opts: str) -> Path:
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "snapd-test", str(mnt)], check=True)
        mounted.append(mnt)
        return mnt

    yield mount
    for m in mounted:
        subprocess.run(["umount", str(m)], check=False)


def test_output_directory_unwritable(compile_victim, spawn, snapd_cmd, small_tmpfs):
    v = spawn([compile_victim("threads")])
    mnt = small_tmpfs("size=1m,ro")
    r = run(snapd_cmd, "-o", mnt / "core", v.pid)
    assert_clean_failure(r, r"cannot write core: read-only file system", mnt)
    assert_untouched(v.pid)


def test_disk_full(compile_victim, spawn, snapd_cmd, small_tmpfs):
    v = spawn([compile_victim("bigmem"), 64, 32])
    mnt = small_tmpfs("size=4m")
    r = run(snapd_cmd, "-o", mnt / "core", v.pid)
    assert_clean_failure(r, r"cannot write core: no space left on device", mnt)
    assert list(mnt.iterdir()) == []
    assert_untouched(v.pid)


def dump_started(directory: Path) -> bool:
    """The core's temp file is there; not the calibration's (``.snapd-partial.calibrate.*``),
    which a stale measurement (a busy machine makes it so) writes in the same directory first."""
    return any(not f.name.startswith(PARTIAL) for f in directory.glob(".snapd-partial.*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_dump_resumes_target(compile_victim, spawn, snapd_cmd, tmp_path, sig):
    """SIGTERM/SIGINT mid-dump: temp file removed, target resumed, one line, exit non-zero."""
    v = spawn([compile_victim("bigmem"), 2048, 2048], ready_timeout=60)
    p = subprocess.Popen(
        [*snapd_cmd, "gcore", "-o", str(tmp_path / "core"), str(v.pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background by a shell (`.ci/run &`) inherits SIGINT ignored
        # (POSIX: asynchronous lists), and snapd rightly keeps an ignored SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(lambda: dump_started(tmp_path) or p.poll() is not None, 30, "the dump to start")
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode == 0:
        pytest.skip("the dump finished before the signal arrived")  # pragma: no cover
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert_untouched(v.pid)


def test_target_exits_mid_dump(compile_victim, spawn, snapd_cmd, tmp_path):
    """SIGKILL is not stoppable: a target killed while halted ends the dump cleanly."""
    v = spawn([compile_victim("bigmem"), 2048, 2048], ready_timeout=60)
    p = subprocess.Popen(
        [*snapd_cmd, "gcore", "-o", str(tmp_path / "core"), str(v.pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: dump_started(tmp_path) or p.poll() is not None, 30, "the dump to start")
    time.sleep(0)  # nothing to wait for: kill at once
    os.kill(v.pid, signal.SIGKILL)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the dump finished before the kill")  # pragma: no cover
    assert f"pid {v.pid}: no such process (it exited during" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
