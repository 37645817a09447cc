#!/usr/bin/env python3
"""Compression at rest through the daemon: what `compress: zstd` costs and saves, end to end.

A real `snapd daemon --config` (compress: zstd) takes a core of each target with `snapd ctl
snap`; the work after publication compresses it in its bounded child (nice 19, idle I/O) while
the target runs on. For each core it prints the freeze, the core's data (bytes in its data
runs), what is stored, the ratio, and the child's compression speed; the peer, measured in the
same run on the same core (unpacked back to a plain sparse file), is the zstd CLI (-3 -T0) on
the whole file, as systemd-coredump's Compress= stores a core. Speeds are MB of core data per
second. Targets: the bench victim (bigmem) and two real services, PostgreSQL 15 after pgbench,
and redis 7 with a populated keyspace.

    sudo .venv/bin/python bench/ship_daemon_bench.py [--dir /var/tmp/snapd-ship-bench]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ship_bench import BENCH_DIR, PG_BIN, bigmem, postgres, work_dir  # noqa: E402
from snapd.ship import sparse  # noqa: E402
from snapd.ship.opencore import open_core  # noqa: E402

MB = 1e6
SNAPD = [sys.executable, "-m", "snapd"]


@contextlib.contextmanager
def daemon(work: Path) -> Iterator[tuple[str, Path]]:
    etc, rules, state = work / "etc", work / "rules.d", work / "state"
    for d in (etc, rules):
        d.mkdir(mode=0o755)
    conf = etc / "snapd.yaml"
    conf.write_text("compress: zstd\nretention: {max_use: infinity, keep_free: 1G}\n")
    sock = str(work / "ctl.sock")
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 (closed below)
    p = subprocess.Popen(
        [*SNAPD, "daemon", "--config", str(conf), "--rules", str(rules), "--state", str(state),
         "--socket", sock],
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while ctl(sock, "status", check=False).returncode:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start; see {work / 'daemon.log'}")
            time.sleep(0.2)
        yield sock, state
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        log.close()


def ctl(sock: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SNAPD, "ctl", "--socket", sock, *args], capture_output=True, text=True,
                          check=check, timeout=900)  # fmt: skip


def snap_and_wait(sock: str, state: Path, pid: int) -> dict[str, Any]:
    took = json.loads(ctl(sock, "snap", str(pid), "--json").stdout)
    published = time.monotonic()
    while True:
        e = json.loads(ctl(sock, "info", str(took["id"]), "--json").stdout)
        if e.get("compression") == "zstd":
            break
        if time.monotonic() - published > 900:
            raise RuntimeError(f"core {took['id']} not compressed after 900 s")
        time.sleep(0.05)
    e["after_publish_s"] = time.monotonic() - published
    db = sqlite3.connect(f"file:{state / 'catalog.db'}?mode=ro", uri=True)
    sql = "SELECT data_bytes, compress_seconds FROM shipping WHERE core_id = ?"
    row = db.execute(sql, (e["id"],)).fetchone()
    db.close()
    e["data_bytes"], e["compress_seconds"] = int(row[0]), float(row[1])
    return e


def peer(e: dict[str, Any], work: Path) -> tuple[float, int]:
    with open_core(e["path"]) as plain:
        out = work / "peer.zst"
        t0 = time.monotonic()
        subprocess.run(["zstd", "-q", "-f", "-3", "-T0", plain, "-o", str(out)], check=True)
        s = time.monotonic() - t0
        n = sparse.disk_bytes(str(out))
        out.unlink()
    return s, n


@contextlib.contextmanager
def redis(work: Path, keys: int) -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--enable-debug-command", "yes", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
        deadline = time.monotonic() + 30
        while subprocess.run([*cli, "ping"], capture_output=True).stdout.strip() != b"PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis did not start")
            time.sleep(0.1)
        subprocess.run([*cli, "debug", "populate", str(keys), "key", "100"], check=True, capture_output=True)
        yield p.pid
    finally:
        p.terminate()
        p.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=BENCH_DIR)
    ap.add_argument("--pg-scale", type=int, default=20)
    ap.add_argument("--redis-keys", type=int, default=1_000_000)
    args = ap.parse_args()
    work = work_dir(args.dir)
    rows = []
    try:
        with daemon(work) as (sock, state):
            targets: list[tuple[str, Any]] = [
                ("bigmem, 256 MiB touched", lambda: bigmem(work, 256, 256)),
                ("bigmem, 2 GiB mapped, 64 MiB touched", lambda: bigmem(work, 2048, 64)),
                (f"redis 7, {args.redis_keys} keys (DEBUG POPULATE)", lambda: redis(work, args.redis_keys)),
            ]
            if (PG_BIN / "postgres").exists():
                targets.append((f"PostgreSQL 15 postmaster, pgbench -s {args.pg_scale}",
                                lambda: postgres(work, args.pg_scale)))  # fmt: skip
            for name, start in targets:
                with start() as pid:
                    e = snap_and_wait(sock, state, pid)
                    zs, zn = peer(e, work)
                rows.append((name, e, zs, zn))
                ctl(sock, "rm", str(e["id"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| core | apparent | data | freeze | stored | ratio | ours MB/s (bounded child) | "
          "after publish | zstd CLI MB/s | its ratio |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, e, zs, zn in rows:
        data = e["data_bytes"]
        print(
            f"| {name} | {e['size'] / 2**20:.0f} MiB | {data / 2**20:.0f} MiB | "
            f"{e['freeze_seconds'] * 1e3:.1f} ms | {e['disk_bytes'] / 2**20:.1f} MiB | "
            f"{data / max(1, e['disk_bytes']):.1f} | {data / MB / max(e['compress_seconds'], 1e-6):.0f} | "
            f"{e['after_publish_s']:.2f} s | {data / MB / max(zs, 1e-6):.0f} | {data / max(1, zn):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
