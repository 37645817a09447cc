"""snapd gcore end to end: real victims, real ptrace, judged by gdb, eu-stack, readelf and drgn."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from snapd import procfs
from snapd.core.inspect import read_core
from support.gdb import gdb
from support.proc import proc_state, thread_states, tracer_of
from support.waiting import wait_for

pytestmark = pytest.mark.kernel


def gcore(
    snapd_cmd: list[str], *args: object, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [*snapd_cmd, "gcore", *map(str, args)], capture_output=True, text=True, timeout=120, **kw
    )  # type: ignore[call-overload]
    if check:
        assert r.returncode == 0, r.stderr
    return r


def assert_running(v: object) -> None:
    """Not left in a stop: no thread in T (stopped) or t (traced)."""
    pid = v.pid  # type: ignore[attr-defined]
    states = thread_states(pid)
    assert not [s for s in states.values() if s in "Tt"], states
    assert tracer_of(pid) == 0


@pytest.mark.lane
def test_threads_backtraces_globals_tls(compile_victim, spawn, snapd_cmd, tmp_path):
    exe = compile_victim("threads")
    v = spawn([exe])
    r = gcore(snapd_cmd, "-o", tmp_path / "core", v.pid, cwd=tmp_path)
    core = tmp_path / f"core.{v.pid}"
    assert re.fullmatch(rf"snapd gcore: {tmp_path}/core\.{v.pid} dumped \(frozen \d+ ms\)", r.stdout.strip())
    assert core.stat().st_mode & 0o777 == 0o600
    assert_running(v)
    tids = procfs.tids(v.pid)

    out = gdb(
        exe,
        core,
        "info threads",
        "thread apply all bt",
        "print/x snapd_global",
        "thread apply all print snapd_tls",
    )
    for tid in tids:
        assert f"LWP {tid}" in out, out
    for fn in ("worker_alpha", "worker_beta", "worker_gamma", "main_wait"):
        assert re.search(rf"in {fn} \(\)", out), f"{fn} missing from:\n{out}"
    assert "0x5eed5eed" in out
    tls = sorted(int(x) for x in re.findall(r"^\$\d+ = (\d+)$", out, re.M))
    assert tls == [1000, 1001, 1002, 1003], out

    # eu-stack agrees on threads and frames
    es = subprocess.run(["eu-stack", "--core", str(core), "-e", str(exe)], capture_output=True, text=True)
    for tid in tids:
        assert f"TID {tid}:" in es.stdout, es.stdout + es.stderr
    for fn in ("worker_alpha", "worker_beta", "worker_gamma", "main_wait"):
        assert fn in es.stdout

    # readelf: one NT_PRSTATUS per thread, and the per-process notes once
    notes = subprocess.run(["readelf", "-n", str(core)], capture_output=True, text=True).stdout
    assert notes.count("NT_PRSTATUS") == len(tids)
    for n in ("NT_PRPSINFO", "NT_AUXV", "NT_FILE"):
        assert notes.count(n) == 1, n
    for n in ("NT_FPREGSET", "NT_X86_XSTATE", "NT_SIGINFO"):
        assert notes.count(n) == len(tids), n


def test_matches_gdb_gcore(compile_victim, spawn, snapd_cmd, tmp_path):
    """Same threads and same mappings as gdb's own gcore of the same victim."""
    exe = compile_victim("threads")
    v = spawn([exe])
    gcore(snapd_cmd, "-o", tmp_path / "ours", v.pid)
    subprocess.run(
        ["gdb", "-nx", "-batch", "-p", str(v.pid), "-ex", f"gcore {tmp_path}/theirs"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    ours, theirs = read_core(str(tmp_path / f"ours.{v.pid}")), read_core(str(tmp_path / "theirs"))
    assert sorted(t.tid for t in ours.threads) == sorted(t.tid for t in theirs.threads)
    assert {(t.tid, t.pc) for t in ours.threads} == {(t.tid, t.pc) for t in theirs.threads}
    # gdb leaves out [vsyscall] and [vvar]; every mapping it has, we have with the same bounds.
    ours_segs = {(s.start, s.end) for s in ours.segments}
    theirs_segs = {(s.start, s.end) for s in theirs.segments}
    assert theirs_segs <= ours_segs, theirs_segs - ours_segs
    assert_running(v)


def test_drgn_reads_core(compile_victim, spawn, snapd_cmd, tmp_path):
    exe = compile_victim("threads")
    v = spawn([exe])
    gcore(snapd_cmd, "-o", tmp_path / "core", v.pid)
    script = f"""
import drgn
prog = drgn.Program()
prog.set_core_dump({str(tmp_path / f"core.{v.pid}")!r})
try:
    prog.load_default_debug_info()
except drgn.MissingDebugInfoError:
    pass  # libc and the vDSO have no debug info here; the victim does
names = set()
for t in prog.threads():
    for frame in t.stack_trace():
        if frame.name: names.add(frame.name)
print(sorted(names))
print(hex(prog["snapd_global"].value_()))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for fn in ("worker_alpha", "worker_beta", "worker_gamma", "main_wait"):
        assert fn in r.stdout, r.stdout + r.stderr
    assert "0x5eed5eed" in r.stdout


@pytest.mark.lane
def test_sparse_1gib_10mib_touched(compile_victim, spawn, snapd_cmd, tmp_path):
    exe = compile_victim("bigmem")
    v = spawn([exe, 1024, 10])
    buf = int(v.ready_line.split()[1], 16)
    gcore(snapd_cmd, "-o", tmp_path / "core", v.pid)
    core = tmp_path / f"core.{v.pid}"
    st = core.stat()
    assert st.st_size > 1 << 30  # the whole address space is there...
    assert 10 << 20 <= st.st_blocks * 512 < 24 << 20  # ...but only what was touched is on disk
    # page 1234 of the buffer holds (1234 % 251) + 1
    out = gdb(exe, core, f"x/1bx {buf + 1234 * 4096:#x}", f"x/1bx {buf + (200 << 20):#x}")
    assert f":\t{(1234 % 251) + 1:#04x}" in out, out
    assert ":\t0x00" in out, out  # untouched: a hole, read as zero
    assert_running(v)


def test_target_runs_on_and_parent_sees_nothing(compile_victim, spawn, snapd_cmd, tmp_path):
    exe = compile_victim("bigmem")
    v = spawn([exe, 64, 64])
    counter_addr = v.ready_line.split()[2]
    assert counter_addr
    before = _ask(v, b"c")
    gcore(snapd_cmd, "-o", tmp_path / "core", v.pid)
    # The parent (this test) sees no stop: waitpid(WUNTRACED|WNOHANG) reports nothing.
    assert os.waitpid(v.pid, os.WUNTRACED | os.WNOHANG) == (0, 0)
    assert proc_state(v.pid) not in "Tt"
    wait_for(lambda: _ask(v, b"c") > before, 10, "the counter to advance after the dump")
    assert_running(v)


def _ask(v: object, cmd: bytes) -> int:
    proc = v.proc  # type: ignore[attr-defined]
    proc.stdin.write(cmd)
    proc.stdin.flush()
    return int(proc.stdout.readline())


def test_several_pids_one_call(compile_victim, spawn, snapd_cmd, tmp_path):
    exe = compile_victim("threads")
    a, b = spawn([exe]), spawn([exe])
    r = gcore(snapd_cmd, "-o", tmp_path / "c", a.pid, b.pid)
    assert [re.sub(r" \(frozen \d+ ms\)$", "", line) for line in r.stdout.splitlines()] == [
        f"snapd gcore: {tmp_path}/c.{a.pid} dumped",
        f"snapd gcore: {tmp_path}/c.{b.pid} dumped",
    ]


def test_thread_churn_is_caught(compile_victim, spawn, snapd_cmd, tmp_path):
    """Threads born while we attach are halted too; the target is never left stopped."""
    exe = compile_victim("churn")
    v = spawn([exe])
    for i in range(10):
        gcore(snapd_cmd, "-o", tmp_path / f"c{i}", v.pid)
        core = read_core(str(tmp_path / f"c{i}.{v.pid}"))
        assert len(core.threads) >= 3
        os.unlink(tmp_path / f"c{i}.{v.pid}")
        assert_running(v)


def test_python_target(spawn, snapd_cmd, tmp_path):
    """A CPython process: gdb's backtrace reaches the interpreter's eval loop."""
    code = "import sys,time\nprint('ready', flush=True)\nsys.stdin.read()\n"
    py = "/usr/bin/python3"
    v = spawn([py, "-c", code])
    gcore(snapd_cmd, "-o", tmp_path / "core", v.pid)
    out = gdb(os.path.realpath(py), tmp_path / f"core.{v.pid}", "bt")
    assert "_PyEval_EvalFrameDefault" in out or "PyEval_EvalCode" in out, out
    assert_running(v)


def test_progress_only_on_a_terminal(compile_victim, spawn, snapd_cmd, tmp_path):
    exe = compile_victim("bigmem")
    v = spawn([exe, 64, 64])
    env = {**os.environ, "SNAPD_PROGRESS_AFTER": "0"}
    r = gcore(snapd_cmd, "-o", tmp_path / "core", v.pid, env=env)
    # not a tty: no meter
    assert re.fullmatch(rf"snapd gcore: {tmp_path}/core\.{v.pid} dumped \(frozen \d+ ms\)\n", r.stdout)

    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.environ["SNAPD_PROGRESS_AFTER"] = "0"
        os.execv(snapd_cmd[0], [*snapd_cmd, "gcore", "-o", str(tmp_path / "tty"), str(v.pid)])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    os.close(fd)
    text = out.decode()
    assert "MiB/s" in text and "ETA" in text, text
    assert f"tty.{v.pid} dumped" in text


#: name -> gdb expression; the AVX-512 ones only where the CPU has AVX-512 (gdb has no $zmm7 or
#: $k1 on a CPU without it: "Attempt to extract a component of a value that is not a structure")
REGS = {"ymm7": "$ymm7.v4_double", "xmm7": "$xmm7.v2_double", "mxcsr": "$mxcsr"}
REGS_AVX512 = {"zmm7": "$zmm7.v8_double", "k1": "$k1"}


def registers(exe: object, core: object, regs: dict[str, str]) -> dict[str, str]:
    """Each register's value as gdb prints it, by name (an error line where gdb has none)."""
    cmds = []
    for name, expr in regs.items():
        cmds += [f"echo @{name}=", f"output {expr}", "echo \\n"]
    out = gdb(exe, core, *cmds)
    found = dict(re.findall(r"^@(\w+)=(.*)$", out, re.M))
    assert set(found) == set(regs), out
    return found


@pytest.mark.lane
@pytest.mark.parametrize("mode", ["frozen", "fork"])
def test_vector_registers_same_as_gdb_gcore(compile_victim, spawn, snapd_cmd, tmp_path, mode):
    """YMM/ZMM/opmask state reads back as the victim set it, on any CPU (AMD's XSAVE layout
    differs from the Intel one gdb expects: snapd.core.xsave), and as from gdb's own gcore for
    what gdb itself gets right (on AMD Zen 4, gdb 13's gcore loses ZMM upper halves and opmasks).
    Only the registers this CPU has are asked for."""
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text()
    exe = compile_victim("avx", "-mavx512f" if avx512 else "-mavx")
    v = spawn([exe])
    wait_for(lambda: Path(f"/proc/{v.pid}/wchan").read_text() != "0", 30, "the victim to park in pause()")
    gcore(snapd_cmd, "--snapshot", mode, "-o", tmp_path / "ours", v.pid)
    subprocess.run(
        ["gdb", "-nx", "-batch", "-p", str(v.pid), "-ex", f"gcore {tmp_path}/theirs"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    regs = {**REGS, **(REGS_AVX512 if avx512 else {})}
    ours = registers(exe, tmp_path / f"ours.{v.pid}", regs)
    theirs = registers(exe, tmp_path / "theirs", REGS)
    assert {k: ours[k] for k in REGS} == theirs, (ours, theirs)
    assert ours["ymm7"] == "{1, 2, 3, 4}", ours
    assert not any("too small" in v or "unavailable" in v for v in ours.values()), ours
    if avx512:
        assert ours["zmm7"] == "{1, 2, 3, 4, 5, 6, 7, 8}" and ours["k1"] == "90", ours
