#!/usr/bin/env python3
"""The stack report (``snapd inspect CORE --stacks``) vs ``gdb -batch -ex "thread apply all bt"``
on the same cores, alternated in one run.

Scenarios: (a) a 64 MiB service with 4 threads, (b) a 1 GiB process with 50 threads (both
tests/victims/rpt_bench.c), (c) a CPython process (tests/victims/rpt_pyparked.py, whose report
also holds the Python stacks and the GIL holder, which gdb's bt does not give). Each core is
written once by snapd's own writer; each tool runs as a user runs it (a fresh process, start-up
included; snapd's includes its sandboxed workers) with the same debug info (libc6-dbg) and
debuginfod off. After a warm-up of each, the rounds alternate gdb / snapd inspect / run_report();
the medians of wall time and of peak RSS (wait4: the process and its descendants) are printed
with the ratios to gdb. Goal: a ratio of time <= 1.

    sudo .venv/bin/python bench/report_bench.py [--rounds 5] [--dir /var/tmp/snapd-report-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' support package

from snapd.core import write_core  # noqa: E402
from snapd.report import ReportLimits, run_report  # noqa: E402
from support.victims import VICTIMS, build_victim  # noqa: E402

SNAPD = [sys.executable, "-m", "snapd"]
GDB = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off", "-ex", "thread apply all bt"]


@dataclass
class Sample:
    seconds: float
    rss: int  # bytes


def measure_call(core: Path) -> Sample:
    """run_report() as the daemon calls it: the caller is already running; the worker's time."""
    t0 = time.monotonic()
    rep = run_report(str(core), limits=ReportLimits(nice=0, idle_io=False))
    if rep["error"]:
        raise SystemExit(f"report failed: {rep['error']}")
    return Sample(time.monotonic() - t0, int(rep.get("max_rss", 0)))


def measure(argv: list[str]) -> Sample:
    t0 = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "DEBUGINFOD_URLS"}
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, rusage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({p.returncode}): {' '.join(argv)}")
    return Sample(time.monotonic() - t0, rusage.ru_maxrss * 1024)


class Victim:
    def __init__(self, argv: list[str]) -> None:
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline() if self.p.stdout else ""
        if not line.startswith("ready"):
            self.close()
            raise SystemExit(f"victim {argv} not ready: {line!r}")

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


def build(tmp: Path) -> Path:
    return build_victim("rpt_bench", "-O2", "-fomit-frame-pointer")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp/snapd-report-bench")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("report_bench: run as root (it dumps live processes)", file=sys.stderr)
        return 2
    os.makedirs(args.dir, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        exe = build(tmp)
        scenarios = {
            "a: 64 MiB service, 4 threads": ([str(exe), "64", "4"], str(exe)),
            "b: 1 GiB, 50 threads": ([str(exe), "1024", "50"], str(exe)),
            "c: CPython, 4 threads": (
                ["/usr/bin/python3", str(VICTIMS / "rpt_pyparked.py")],
                "/usr/bin/python3",
            ),
        }
        head = f"{'scenario':<30} {'core':>8} {'gdb s':>6} {'inspect s':>9} {'ratio':>5} {'report s':>8}"
        print(head + f" {'ratio':>5} {'gdb RSS':>8} {'inspect RSS':>11} {'worker RSS':>10}")
        for name, (vargv, binary) in scenarios.items():
            v = Victim(vargv)
            core = tmp / "core"
            try:
                write_core(v.p.pid, str(core))
            finally:
                v.close()
            size = core.stat().st_blocks * 512
            gdb_argv = [*GDB, binary, str(core)]
            snapd_argv = [*SNAPD, "inspect", str(core), "--stacks", "--json"]
            rep = json.loads(subprocess.run(snapd_argv, capture_output=True, text=True, check=True).stdout)
            measure(gdb_argv)  # warm-up: page cache, debug files
            measure_call(core)
            gdb, ours, calls = [], [], []
            for _ in range(args.rounds):
                gdb.append(measure(gdb_argv))
                ours.append(measure(snapd_argv))
                calls.append(measure_call(core))
            g = statistics.median(s.seconds for s in gdb)
            o = statistics.median(s.seconds for s in ours)
            c = statistics.median(s.seconds for s in calls)
            grss = statistics.median(s.rss for s in gdb)
            orss = statistics.median(s.rss for s in ours)
            wrss = statistics.median(s.rss for s in calls)
            mib = 2**20
            print(
                f"{name:<30} {size / mib:>6.0f}Mi {g:>6.2f} {o:>9.2f} {o / g:>5.2f} {c:>8.2f} {c / g:>5.2f}"
                f" {grss / mib:>6.0f}Mi {orss / mib:>9.0f}Mi {wrss / mib:>8.0f}Mi"
            )
            if rep.get("error"):
                print(f"  report failed: {rep['error']}")
            core.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("gdb, inspect: median wall seconds of the command, start-up included (snapd inspect CORE --stacks")
    print("  --json); report: run_report() called from a running process, as the daemon does (its worker's")
    print("  start-up included). RSS: peak of the process and its children (wait4); worker RSS: the")
    print("  sandboxed worker alone; the caller's own RSS does not grow.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
