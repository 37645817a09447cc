#!/usr/bin/env python3
"""What the /proc/PID/pagemap fallback costs against PAGEMAP_SCAN, in one run on one victim.

The victim (tests/victims/bigmem.c) maps 2 GiB and touches 16 MiB: gcore_bench's scenario (b).
Each path finds its resident runs (snapd.core.pages.PageMap.present over every anonymous
mapping, as the core writer does) and has_anon() over every private file mapping (as the freeze
does); medians of --rounds. Where the kernel has no PAGEMAP_SCAN (before 6.7) only the fallback
runs, and its time is shown against the same victim's `snapd gcore` run, for scale.

    sudo .venv/bin/python bench/pagemap_bench.py [--rounds 9] [--alloc 2048 --touch 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snapd import kernel, procfs
from snapd.core.pages import PageMap
from snapd.kernel import Feature

ROOT = Path(__file__).resolve().parent.parent


def measure(pid: int, scan: bool, rounds: int) -> tuple[float, float, int]:
    """Median seconds of (present() over anonymous mappings, has_anon() over file mappings)."""
    maps = procfs.smaps(pid)
    anon = [m for m in maps if not m.file_backed and m.start < 1 << 47]
    files = [m for m in maps if m.file_backed and not m.shared]
    t_present, t_anon = [], []
    found = 0
    for _ in range(rounds):
        with PageMap(pid) as pm:
            pm.scan_ok = scan
            t0 = time.perf_counter()
            found = sum(e - s for m in anon for s, e in pm.present(m.start, m.end))
            t1 = time.perf_counter()
            for m in files:
                pm.has_anon(m.start, m.end)
            t2 = time.perf_counter()
            assert pm.scan_ok is scan
        t_present.append(t1 - t0)
        t_anon.append(t2 - t1)
    return statistics.median(t_present), statistics.median(t_anon), found


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--alloc", type=int, default=2048, help="MiB mapped")
    ap.add_argument("--touch", type=int, default=16, help="MiB touched")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root", file=sys.stderr)
        return 2
    build = Path(tempfile.mkdtemp(prefix="snapd-bench-"))
    exe = build / "bigmem"
    subprocess.run(
        ["gcc", "-O1", "-pthread", "-o", str(exe), str(ROOT / "tests/victims/bigmem.c")], check=True
    )
    v = subprocess.Popen(
        [str(exe), str(args.alloc), str(args.touch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert v.stdout is not None
        assert v.stdout.readline().startswith(b"ready")
        scan = kernel.probe(Feature.PAGEMAP_SCAN)
        print(f"# kernel {os.uname().release}: {scan.line()}")
        print(f"# victim: {args.alloc} MiB mapped, {args.touch} MiB touched; medians of {args.rounds}")
        print(f"{'path':<22} {'present() ms':>13} {'has_anon() ms':>14} {'found MiB':>10}")
        rows = {}
        for path, use_scan in (("PAGEMAP_SCAN", True), ("/proc/PID/pagemap", False)):
            if use_scan and not scan.present:
                continue
            p, a, found = measure(v.pid, use_scan, args.rounds)
            rows[path] = (p, a)
            print(f"{path:<22} {p * 1e3:13.2f} {a * 1e3:14.2f} {found / 2**20:10.1f}")
        if len(rows) == 2:
            (sp, sa), (fp, fa) = rows["PAGEMAP_SCAN"], rows["/proc/PID/pagemap"]
            print(f"ratio fallback/scan: present() {fp / sp:.1f}x, has_anon() {fa / max(sa, 1e-9):.1f}x")
        out = build / "core"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "snapd", "gcore", "-o", str(out), str(v.pid)],
            check=True,
            capture_output=True,
        )
        whole = time.perf_counter() - t0
        fp, fa = rows["/proc/PID/pagemap"]
        print(
            f"for scale: a whole `snapd gcore` of it took {whole * 1e3:.0f} ms; the fallback's share "
            f"{(fp + fa) / whole * 100:.1f}%"
        )
    finally:
        v.kill()
        v.wait()
        shutil.rmtree(build)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
