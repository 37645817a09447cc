"""The uprobe/USDT prototype (tests/triggers/bpf/uprobe_proto.bpf.c on src/snapd/probe/
uprobe.bpf.c): one entry and one return program for every attachment, the cookie naming the
site; function entry and return, libc's malloc, CPython's and PostgreSQL's USDT probes with
their semaphores set for the targeted process only."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapd import procfs
from snapd.probe import symbols, usdt
from snapd.probe.trigger_layout import SiteFlag
from snapd.rules.expr import Field, Op
from support.triggers import UProto, command, until
from support.victims import Victim

pytestmark = pytest.mark.kernel
PYTHON = "/usr/bin/python3.11"
VICTIMS = Path(__file__).resolve().parent.parent / "victims"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module")
def proto() -> Iterator[UProto]:
    p = UProto()
    yield p
    p.close()


@pytest.fixture
def up(proto: UProto) -> Iterator[UProto]:
    proto.ring.take()
    yield proto
    for link in proto.links:
        link.close()
    proto.links = []


@pytest.fixture
def victim(compile_victim: Callable[..., Path], spawn: Callable[..., Victim]) -> Victim:
    return spawn([compile_victim("trg_victim")])


def marker_site(v: Victim, ret: bool = False) -> symbols.Site:
    exe = procfs.exe(v.pid)
    return symbols.function_site(symbols.resolve_binary(exe, v.pid), "trg_marker", ret)


def fires(up: UProto, n: int, what: str) -> list[Any]:
    up.ring.wait(n, what=what)
    up.ring.drain(0.2)
    return up.ring.take()


def test_entry_with_arg0_equal(up: UProto, victim: Victim) -> None:
    site = marker_site(victim)
    idx = up.site(tgid=victim.pid, field=Field.ARG0, op=Op.EQ, k=42)
    up.attach(idx, site.binary.path, site.offset, pid=victim.pid)
    command(victim, "c 41")
    tid, ret, _ = command(victim, "c 42")
    got = fires(up, 1, "trg_marker(42)")
    assert len(got) == 1 and ret == 1042
    f = got[0]
    assert (f.kind, f.site, f.pid, f.tid, f.args[0]) == (1, idx, victim.pid, tid, 42)


def test_return_with_ret_equal_and_latency(up: UProto, victim: Victim) -> None:
    site = marker_site(victim)
    idx = up.site(flags=SiteFlag.SAVE_ENTRY, tgid=victim.pid, field=Field.RET, op=Op.EQ, k=1007)
    up.attach(idx, site.binary.path, site.offset, pid=victim.pid)
    up.attach(idx, site.binary.path, site.offset, ret=True, pid=victim.pid)
    command(victim, "c 8")
    command(victim, "c 7")
    got = fires(up, 1, "trg_marker(7) returning 1007")
    assert len(got) == 1
    f = got[0]
    assert (f.kind, f.ret, f.args[0]) == (2, 1007, 7)  # the entry's arguments at the return
    assert 0 < f.latency < 10_000_000_000


def test_libc_malloc_arg0_above(up: UProto, victim: Victim) -> None:
    libc = symbols.resolve_binary("libc.so.6", victim.pid)
    site = symbols.function_site(libc, "malloc")
    size = 3 << 20
    idx = up.site(tgid=victim.pid, field=Field.ARG0, op=Op.GT, k=size)
    up.attach(idx, libc.path, site.offset, pid=victim.pid)
    command(victim, f"a {size}")  # not above
    command(victim, "a 100")
    command(victim, f"a {size + 1}")
    got = fires(up, 1, "malloc(3 MiB + 1)")
    assert [f.args[0] for f in got] == [size + 1]


def test_system_wide_probe_turns_non_targets_away(
    up: UProto, compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    """One event for every process mapping the file: the non-target traps (the program runs)
    but nothing fires for it."""
    exe = compile_victim("trg_victim")
    a, b = spawn([exe]), spawn([exe])
    site = symbols.function_site(symbols.resolve_binary(str(exe)), "trg_marker")
    idx = up.site(tgid=a.pid)
    up.attach(idx, str(exe), site.offset)  # pid None: system-wide
    runs = up.count(0)
    command(b, "c 1")
    until(lambda: up.count(0) == runs + 1, "the non-target's trap")
    command(a, "c 2")
    got = fires(up, 1, "the target's call")
    assert [(f.pid, f.args[0]) for f in got] == [(a.pid, 2)]


def test_process_scope_leaves_others_untouched(
    up: UProto, compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    exe = compile_victim("trg_victim")
    a, b = spawn([exe]), spawn([exe])
    site = marker_site(a)
    idx = up.site()
    up.attach(idx, site.binary.path, site.offset, pid=a.pid)
    runs = up.count(0)
    for _ in range(3):
        command(b, "c 1")
    assert up.count(0) == runs  # b never trapped: its text has no breakpoint
    command(a, "c 1")
    assert [f.pid for f in fires(up, 1, "a's call")] == [a.pid]
    assert up.count(0) == runs + 1


def test_a_link_per_site_and_one_program() -> None:
    """The programs' tags do not depend on what is attached (nothing of a probe is C)."""

    def tags(p: UProto) -> set[str]:
        out = set()
        for fd in (p.entry_fd, p.return_fd):
            info = procfs.parse_status(procfs.read_bytes(f"/proc/self/fdinfo/{fd}"))
            out.add(info["prog_tag"])
        return out

    one, two = UProto(), UProto()
    try:
        py = usdt.find(symbols.resolve_binary(PYTHON), "python:function__entry")[0]
        one.site(flags=SiteFlag.USDT, args=py.args, field=Field.ARG2, op=Op.EQ, k=3)
        two.site(field=Field.ARG0, op=Op.GT, k=1 << 30)
        assert tags(one) == tags(two) and len(tags(one)) == 2
    finally:
        one.close()
        two.close()


# ---- USDT ------------------------------------------------------------------------------------


def read_mem(pid: int, addr: int, n: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(addr)
        return f.read(n)


def read_cstr(pid: int, addr: int) -> str:
    return read_mem(pid, addr, 256).split(b"\0")[0].decode()


def runtime_addr(pid: int, path: str, file_offset: int) -> int:
    """Where file offset ``file_offset`` of ``path`` is mapped in ``pid``."""
    st = os.stat(path)
    for m in procfs.maps(pid):
        if m.inode == st.st_ino and m.offset <= file_offset < m.offset + m.size:
            return m.start + file_offset - m.offset
    raise AssertionError(f"{path}+{file_offset:#x} not mapped in {pid}")


def semaphore(pid: int, site: usdt.Site, path: str) -> int:
    return int.from_bytes(read_mem(pid, runtime_addr(pid, path, site.semaphore_offset), 2), "little")


def test_python_function_entry(up: UProto, spawn: Callable[..., Victim]) -> None:
    """function__entry with arg2 (the line) == trg_fn's; CPython 3.11 fires it only while a
    profile function is set (see tests/victims/trg_py.py), so the victim sets a C one."""
    if not Path(PYTHON).exists():
        pytest.skip("no /usr/bin/python3.11")
    v = spawn([PYTHON, str(VICTIMS / "trg_py.py"), "profile"])
    other = spawn([PYTHON, str(VICTIMS / "trg_py.py"), "profile"])
    line = int(v.ready_line.split("line=")[1])
    b = symbols.resolve_binary(PYTHON, v.pid)
    (site,) = usdt.find(b, "python:function__entry")
    assert semaphore(v.pid, site, PYTHON) == 0
    idx = up.site(flags=SiteFlag.USDT, args=site.args, tgid=v.pid, field=Field.ARG2, op=Op.EQ, k=line)
    link = up.attach(idx, b.path, site.offset, pid=v.pid, ref_ctr_offset=site.semaphore_offset)
    # set in the target only (the other python3.11 keeps its fast path)
    assert semaphore(v.pid, site, PYTHON) == 1 and semaphore(other.pid, site, PYTHON) == 0
    command(v, "x 5")
    got = fires(up, 1, "trg_fn's entry")
    assert len(got) == 1
    f = got[0]
    assert f.args[2] == line and read_cstr(v.pid, f.args[1]) == "trg_fn"
    assert read_cstr(v.pid, f.args[0]).endswith("trg_py.py")
    link.close()
    assert semaphore(v.pid, site, PYTHON) == 0  # cleared when the rule goes


def test_python_audit_without_tracing(up: UProto, spawn: Callable[..., Victim]) -> None:
    """python:audit fires for sys.audit() in a plain interpreter (no profile function)."""
    if not Path(PYTHON).exists():
        pytest.skip("no /usr/bin/python3.11")
    v = spawn([PYTHON, str(VICTIMS / "trg_py.py")])
    b = symbols.resolve_binary(PYTHON, v.pid)
    (site,) = usdt.find(b, "python:audit")
    idx = up.site(flags=SiteFlag.USDT, args=site.args, tgid=v.pid)
    up.attach(idx, b.path, site.offset, pid=v.pid, ref_ctr_offset=site.semaphore_offset)
    command(v, "a 7")
    up.ring.drain(0.3)
    names = [read_cstr(v.pid, f.args[0]) for f in up.ring.take()]
    assert names.count("trg.audit") == 1, names


# ---- PostgreSQL ------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_cluster(_tmp: Path) -> Iterator[tuple[list[str], Path]]:
    """A PostgreSQL 15 cluster of its own (unix socket only); yields (psql argv, data dir).
    Its directory is not under pytest's (mode 0700, which user postgres cannot traverse)."""
    tmp = Path(tempfile.mkdtemp(prefix="trg-pg-"))
    os.chmod(tmp, 0o755)
    data, sock = tmp / "pg", tmp / "pgsock"
    for d in (data, sock):
        d.mkdir()
        shutil.chown(d, "postgres", "postgres")
    run = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust"], check=True, capture_output=True
    )
    port = str(21000 + os.getpid() % 8000)
    p = subprocess.Popen(
        [
            *run,
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-k",
            str(sock),
            "-p",
            port,
            "-c",
            "listen_addresses=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = ["-h", str(sock), "-p", port]
    try:
        until(
            lambda: subprocess.run([*run, str(PG_BIN / "pg_isready"), "-q", *conn]).returncode == 0,
            "postgres to accept connections",
            60,
        )
        yield [*run, "psql", "-X", "-q", "-A", "-t", *conn, "postgres"], data
    finally:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)  # fast shutdown
        p.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def test_postgres_transaction_start(up: UProto, tmp_path: Path) -> None:
    if not (PG_BIN / "postgres").exists():
        pytest.skip("postgresql-15 is not installed")
    with pg_cluster(tmp_path) as (psql, _):
        s = subprocess.Popen(psql, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert s.stdin is not None and s.stdout is not None
            s.stdin.write("SELECT pg_backend_pid();\n")
            s.stdin.flush()
            backend = int(s.stdout.readline())
            b = symbols.resolve_binary(str(PG_BIN / "postgres"), backend)
            (site,) = usdt.find(b, "postgresql:transaction__start")
            idx = up.site(flags=SiteFlag.USDT, args=site.args, tgid=backend)
            up.attach(idx, b.path, site.offset, pid=backend, ref_ctr_offset=site.semaphore_offset)
            s.stdin.write("BEGIN; SELECT 1; COMMIT;\nSELECT 'done';\n")
            s.stdin.flush()
            assert s.stdout.readline().strip() == "1"
            assert s.stdout.readline().strip() == "done"
            got = fires(up, 2, "two transactions in the backend")
            assert [f.pid for f in got] == [backend, backend]
            # LocalTransactionId: consecutive in one backend
            assert got[1].args[0] == got[0].args[0] + 1
        finally:
            s.kill()
            s.wait()


def test_postgres_forked_backends_system_wide(up: UProto, tmp_path: Path) -> None:
    """A system-wide probe on the postgres binary covers backends forked after it was set."""
    if not (PG_BIN / "postgres").exists():
        pytest.skip("postgresql-15 is not installed")
    with pg_cluster(tmp_path) as (psql, data):
        b = symbols.resolve_binary(str(PG_BIN / "postgres"))
        (site,) = usdt.find(b, "postgresql:transaction__start")
        idx = up.site(flags=SiteFlag.USDT, args=site.args)
        up.attach(idx, b.path, site.offset, ref_ctr_offset=site.semaphore_offset)
        master = int((data / "postmaster.pid").read_text().split()[0])
        run = psql[:4]
        conn = psql[psql.index("-h") : psql.index("-h") + 4]
        script = data.parent / "trg.sql"
        script.write_text("SELECT 1;\n")
        os.chmod(script, 0o644)
        t0 = time.monotonic_ns()
        subprocess.run(
            [*run, str(PG_BIN / "pgbench"), "-n", "-f", str(script), "-t", "3", "-c", "1", *conn, "postgres"],
            check=True,
            capture_output=True,
        )
        got = fires(up, 3, "pgbench's transactions")
        backends = {f.pid for f in got if f.ts >= t0}
        assert backends and master not in backends
