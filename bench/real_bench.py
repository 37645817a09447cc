#!/usr/bin/env python3
"""snapd gcore vs gdb's gcore on real servers nobody here wrote: redis and PostgreSQL 15.

    sudo .venv/bin/python bench/real_bench.py [--rounds 3] [--dir /var/tmp/snapd-bench]
         [--only redis|postgres|backend] [--variants frozen,fork,auto] [--redis-mb 900]

- redis: redis-server on 127.0.0.1 (a free port, a private config, no persistence), filled with
  DEBUG POPULATE to about --redis-mb MB resident;
- postgres: a private cluster (initdb under a temp dir, run as user postgres, 127.0.0.1, a free
  port), shared_buffers 600MB filled by pgbench -i -s 40 and pg_prewarm; the postmaster dumped;
- backend: one backend of that cluster while `pgbench -c 1` runs against it.

Each tool runs as a user runs it (a new process, start-up included) writing into the same
directory, after a warm-up of each, alternated for --rounds rounds; the core is removed after
each run. The freeze is what the target went through: a sampler thread polls the state of the
target's main thread in /proc (every 0.5 ms) and reports the longest stretch in ptrace-stop.
Every process started here is ended by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPD = [str(Path(sys.executable).parent / "snapd")]
PGBIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class StopSampler:
    """The longest stretch the target's main thread spent in a stop ('t' or 'T')."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.longest = 0.0
        self._run = True
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _state(self) -> str:
        try:
            data = Path(f"/proc/{self.pid}/stat").read_bytes()
        except OSError:
            return "?"
        return data[data.rfind(b")") + 2 : data.rfind(b")") + 3].decode()

    def _loop(self) -> None:
        since = 0.0
        while self._run:
            now = time.monotonic()
            if self._state() in ("t", "T"):
                since = since or now
                self.longest = max(self.longest, now - since)
            else:
                since = 0.0
            time.sleep(0.0005)

    def stop(self) -> float:
        self._run = False
        self._t.join()
        return self.longest


@dataclass
class Run:
    seconds: float
    freeze_ms: float
    disk_mb: float
    verbose: str


def dump(tool: str, pid: int, outdir: Path) -> Run:
    prefix = outdir / f"core-{tool}"
    if tool == "gdb":
        argv = ["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "set debuginfod enabled off"]
        argv += ["-ex", f"gcore {prefix}.{pid}"]
    else:
        argv = [*SNAPD, "gcore", "-v", "--snapshot", tool, "-o", str(prefix), str(pid)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as installed
    sampler = StopSampler(pid)
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    el = time.monotonic() - t0
    freeze = sampler.stop()
    if r.returncode != 0:
        raise SystemExit(f"{tool} failed: {r.stderr.strip()}")
    core = Path(f"{prefix}.{pid}")
    st = core.stat()
    core.unlink()
    return Run(el, freeze * 1e3, st.st_blocks * 512 / 2**20, r.stdout if tool != "gdb" else "")


def compare(name: str, pid: int, tools: list[str], rounds: int, outdir: Path) -> list[str]:
    print(f"\n## {name}: pid {pid}, {rss_mb(pid):,.0f} MB resident; load average {os.getloadavg()[0]:.1f}")
    for t in tools:
        dump(t, pid, outdir)  # warm-up
    runs: dict[str, list[Run]] = {t: [] for t in tools}
    for r in range(rounds):
        for t in tools[r % len(tools) :] + tools[: r % len(tools)]:  # rotated: see gcore_bench.py
            runs[t].append(dump(t, pid, outdir))
    for t in tools[1:]:
        print(f"{t}, last run:")
        for line in runs[t][-1].verbose.splitlines():
            print(f"    {line}")
    print(f"{'tool':<8} {'seconds':>20} {'freeze ms':>20} {'on disk':>10}")
    med = {}
    for t in tools:
        rs = runs[t]
        s = statistics.median(r.seconds for r in rs)
        f = statistics.median(r.freeze_ms for r in rs)
        med[t] = (s, f)
        secs = f"{s:.2f} ({min(r.seconds for r in rs):.2f}-{max(r.seconds for r in rs):.2f})"
        frz = f"{f:.0f} ({min(r.freeze_ms for r in rs):.0f}-{max(r.freeze_ms for r in rs):.0f})"
        print(f"{t:<8} {secs:>20} {frz:>20} {statistics.median(r.disk_mb for r in rs):>7.0f} MB")
    rows = []
    gs, gf = med["gdb"]
    for t in tools[1:]:
        s, f = med[t]
        print(f"ratio gdb/{t}: time {gs / s:.2f}x, freeze {gf / max(f, 0.01):.2f}x")
        rows.append(f"| {name} | {t} | {gs:.2f} | {s:.2f} ({gs / s:.2f}x) | {gf:.0f} ms | {f:.0f} ms |")
    return rows


@contextlib.contextmanager
def redis(tmp: Path, mb: int) -> Iterator[int]:
    port = free_port()
    conf = tmp / "redis.conf"
    conf.write_text(
        f'bind 127.0.0.1\nport {port}\nsave ""\nappendonly no\ndaemonize no\ndir {tmp}\n'
        "enable-debug-command local\nprotected-mode yes\n"
    )
    # Started through a symlink: its comm is then one no daemon running beside is likely to watch.
    exe = tmp / "snapd-bredis"
    exe.symlink_to(shutil.which("redis-server") or "/usr/bin/redis-server")
    p = subprocess.Popen([str(exe), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]

        def up() -> bool:
            return subprocess.run([*cli, "ping"], capture_output=True, text=True).stdout.strip() == "PONG"

        wait_for(up, 30, "redis")
        n = mb * 1000  # keys of ~1000 bytes
        subprocess.run(
            [*cli, "debug", "populate", str(n), "snapdbench", "1000"], check=True, capture_output=True
        )
        yield p.pid
    finally:
        p.kill()
        p.wait()


@contextlib.contextmanager
def postgres(tmp: Path) -> Iterator[tuple[int, int]]:
    """(postmaster pid, port). The cluster belongs to user postgres, under ``tmp``."""
    port = free_port()
    data = tmp / "pgdata"
    uid = _uid("postgres")
    if uid is None:
        raise SystemExit("bench: no user 'postgres' (apt install postgresql-15)")
    os.chown(tmp, uid, -1)
    pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*pg, str(PGBIN / "initdb"), "-D", str(data), "-A", "trust"], check=True, capture_output=True
    )
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c shared_buffers=600MB -c fsync=off"
    subprocess.run([*pg, str(PGBIN / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-l", str(tmp / "pg.log"),
                    "start"], check=True, capture_output=True)  # fmt: skip
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        conn = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        subprocess.run(
            [*pg, "pgbench", "-i", "-q", "-s", "40", *conn, "postgres"], check=True, capture_output=True
        )
        sql = "create extension if not exists pg_prewarm; select pg_prewarm('pgbench_accounts');"
        subprocess.run([*pg, "psql", *conn, "-qAt", "-c", sql, "postgres"], check=True, capture_output=True)
        yield pid, port
    finally:
        subprocess.run([*pg, str(PGBIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, check=False)  # fmt: skip


def _uid(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


@contextlib.contextmanager
def pgbench_backend(port: int, tmp: Path) -> Iterator[int]:
    pg = ["runuser", "-u", "postgres", "--"]
    conn = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    p = subprocess.Popen([*pg, "pgbench", "-c", "1", "-T", "600", *conn, "postgres"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        q = "select pid from pg_stat_activity where application_name = 'pgbench' and state <> 'idle' limit 1"
        found: list[int] = []

        def backend() -> bool:
            # The same backend twice, 0.3 s apart: pgbench's first connection (it reads the
            # scale, then closes) is gone by then, and dumping it failed with "No such process".
            out = subprocess.run(
                [*pg, "psql", *conn, "-qAt", "-c", q, "postgres"], capture_output=True, text=True
            )
            now = [int(x) for x in out.stdout.split()[:1]]
            same = bool(now) and now == found
            found[:] = now
            if not same:
                time.sleep(0.3)
            return same

        wait_for(backend, 30, "the pgbench backend")
        yield found[0]
    finally:
        p.kill()  # runuser; pgbench below it sees its connection closed by the stop
        p.wait()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp/snapd-bench")
    ap.add_argument("--only", choices=["redis", "postgres", "backend"])
    ap.add_argument("--variants", default="frozen,fork")
    ap.add_argument("--redis-mb", type=int, default=900)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root", file=sys.stderr)
        return 2
    outdir = Path(args.dir)
    outdir.mkdir(parents=True, exist_ok=True)
    tools = ["gdb", *args.variants.split(",")]
    print(
        f"# snapd gcore vs gdb's gcore on real servers; {args.rounds} alternated rounds after a warm-up; "
        "medians (min-max)"
    )
    rows: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="snapd-realbench-"))
    try:
        if args.only in (None, "redis"):
            with redis(tmp, args.redis_mb) as pid:
                rows += compare(f"redis-server, {args.redis_mb} MB", pid, tools, args.rounds, outdir)
        if args.only in (None, "postgres", "backend"):
            with postgres(tmp) as (pid, port):
                if args.only in (None, "postgres"):
                    rows += compare(
                        "PostgreSQL 15 postmaster, 600 MB shared_buffers", pid, tools, args.rounds, outdir
                    )
                if args.only in (None, "backend"):
                    with pgbench_backend(port, tmp) as bpid:
                        rows += compare("PostgreSQL backend under pgbench", bpid, tools, args.rounds, outdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n# for docs/gcore.md")
    print("| target | snapd | gdb s | snapd s | gdb freeze | snapd freeze |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
