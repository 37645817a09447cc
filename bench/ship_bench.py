#!/usr/bin/env python3
"""Compression at rest and bundles: ratio and speed on the bench victims and on PostgreSQL.

For each core (written by snapd.core.write_core from a live process), three ways to store it:

  ours   compress_core(): multi-threaded zstd -3 over the data runs only (holes stay holes)
  zstd   the zstd CLI, -3 -T0, on the whole file (holes read as zeros), as a core compressed
         by systemd-coredump's Compress= is stored: the peer, measured in the same run
  bundle write_bundle(): the core plus every ELF file it maps (what is sent to someone)

and the time open_core() takes to give a plain sparse core back. Speeds are MB of core data
(the bytes in its data runs) per second; ratios are core data / bytes stored.

    sudo .venv/bin/python bench/ship_bench.py [--dir /var/tmp/snapd-ship-bench] [--no-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' support package

from snapd.core import write_core  # noqa: E402
from snapd.ship import sparse  # noqa: E402
from snapd.ship.bundle import write_bundle  # noqa: E402
from snapd.ship.compress import compress_core  # noqa: E402
from snapd.ship.opencore import open_core  # noqa: E402
from support.victims import build_victim  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BENCH_DIR = "/var/tmp/snapd-ship-bench"


def work_dir(base: str) -> Path:
    """A fresh directory of this run under ``base`` (created if need be), mode 0755 so that
    victims and workers running as other users reach it."""
    os.makedirs(base, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=base))
    os.chmod(work, 0o755)
    return work


MB = 1e6


@dataclass
class Row:
    name: str
    apparent: int
    data: int
    ours_s: float
    ours_bytes: int
    one_s: float
    zstd_s: float
    zstd_bytes: int
    open_s: float
    bundle_s: float
    bundle_bytes: int
    files: int


def measure(name: str, core: Path) -> Row:
    fd = os.open(core, os.O_RDONLY)
    try:
        data = sparse.data_bytes(sparse.data_runs(fd))
    finally:
        os.close(fd)
    subprocess.run(["sync"], check=True)
    one = compress_core(str(core), replace=True, threads=0)
    z = compress_core(str(core), replace=True)
    peer = Path(str(core) + ".peer.zst")
    t0 = time.monotonic()
    subprocess.run(["zstd", "-q", "-f", "-3", "-T0", str(core), "-o", str(peer)], check=True)
    zstd_s = time.monotonic() - t0
    t0 = time.monotonic()
    with open_core(z.path) as plain:
        assert os.path.getsize(plain) == core.stat().st_size
    open_s = time.monotonic() - t0
    b = Path(str(core) + ".snapd")
    t0 = time.monotonic()
    m = write_bundle(str(core), str(b), replace=True)
    bundle_s = time.monotonic() - t0
    row = Row(
        name,
        core.stat().st_size,
        data,
        z.seconds,
        z.disk_bytes,
        one.seconds,
        zstd_s,
        sparse.disk_bytes(str(peer)),
        open_s,
        bundle_s,
        sparse.disk_bytes(str(b)),
        len(m.files),
    )
    for p in (Path(z.path), peer, b, core):
        p.unlink()
    return row


@contextlib.contextmanager
def bigmem(work: Path, alloc: int, touch: int) -> Iterator[int]:
    exe = build_victim("bigmem", "-O2", "-g0", "-fomit-frame-pointer")
    p = subprocess.Popen([str(exe), str(alloc), str(touch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout and p.stdout.readline().startswith(b"ready")
        yield p.pid
    finally:
        p.kill()
        p.wait()


@contextlib.contextmanager
def postgres(work: Path, scale: int) -> Iterator[int]:
    """A PostgreSQL 15 cluster of its own on 127.0.0.1 with pgbench tables loaded and read, so
    shared_buffers hold real pages; yields the postmaster's pid."""
    data, sock = work / "pg", work / "pgsock"
    for d in (data, sock):
        d.mkdir()
        shutil.chown(d, "postgres", "postgres")
    run = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust"], check=True, stdout=subprocess.DEVNULL
    )
    port = str(20000 + os.getpid() % 9000)
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
            "listen_addresses=127.0.0.1",
            "-c",
            "shared_buffers=256MB",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            [*run, str(PG_BIN / "pg_isready"), "-q", "-h", str(sock), "-p", port]
        ).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not start")
            time.sleep(0.2)
        pg = ["-h", str(sock), "-p", port, "postgres"]
        subprocess.run(
            [*run, str(PG_BIN / "pgbench"), "-q", "-i", "-s", str(scale), *pg],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(
            [*run, str(PG_BIN / "pgbench"), "-S", "-t", "2000", *pg],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int((data / "postmaster.pid").read_text().split()[0]), 15)
        p.wait(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=BENCH_DIR)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--pg-scale", type=int, default=20, help="pgbench scale (x 15 MB of tables)")
    args = ap.parse_args()
    work = work_dir(args.dir)
    rows = []
    try:
        for name, alloc, touch in (
            ("bigmem 256 MiB touched", 256, 256),
            ("bigmem 2 GiB mapped, 64 MiB touched", 2048, 64),
        ):
            with bigmem(work, alloc, touch) as pid:
                write_core(pid, str(work / "core"))
            rows.append(measure(name, work / "core"))
        if not args.no_postgres and (PG_BIN / "postgres").exists():
            with postgres(work, args.pg_scale) as pid:
                write_core(pid, str(work / "core"))
            rows.append(measure(f"postgres 15 postmaster, pgbench -s {args.pg_scale}", work / "core"))
        elif not args.no_postgres:
            print("(postgresql-15 not installed: apt-get install postgresql to measure a real service)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"CPUs: {os.cpu_count()}; MB/s of core data; ratio = core data / stored bytes")
    hdr = (
        f"{'core':<42} {'apparent':>9} {'data':>8} | {'ours MB/s':>9} {'1 thr':>6} {'ratio':>6} | "
        f"{'zstd MB/s':>9} {'ratio':>6} | {'speed x':>7} | {'open s':>6} | {'bundle MB':>9} {'files':>5}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ours = r.data / MB / r.ours_s
        peer = r.data / MB / r.zstd_s
        one = r.data / MB / r.one_s
        print(
            f"{r.name:<42} {r.apparent / 2**20:>8.0f}M {r.data / 2**20:>7.0f}M | {ours:>9.0f} {one:>6.0f} "
            f"{r.data / max(1, r.ours_bytes):>6.1f} | {peer:>9.0f} {r.data / max(1, r.zstd_bytes):>6.1f} | "
            f"{r.zstd_s / r.ours_s:>7.1f} | {r.open_s:>6.2f} | {r.bundle_bytes / 2**20:>9.1f} {r.files:>5}"
        )
    print("speed x: the zstd CLI's time / ours (all CPUs), on the same core in the same run;")
    print(f"1 thr: ours in the calling thread (threads=0); load average: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
