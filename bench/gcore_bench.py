#!/usr/bin/env python3
"""snapd gcore vs gdb's gcore on the same victims, alternated in one run.

For each scenario the victim (tests/victims/bigmem.c) touches a known amount of memory and runs
a heartbeat thread that times its own stalls: that is the freeze the target saw. Each tool runs
as a user would run it (a fresh process, start-up included), writing into the same directory;
cores are deleted between runs. After a warm-up of each tool, runs alternate gdb/snapd so that
page-cache and disk state affect both alike; the median of the rounds is printed with ratios.

    sudo .venv/bin/python bench/gcore_bench.py [--rounds 3] [--dir /var/tmp/snapd-bench]
         [--snapshot frozen|fork|both] [--set gcore|freeze]

--set gcore (the gcore issue): (a) 1 GiB touched, (b) 2 GiB mapped / 16 MiB touched, (c) 64 MiB.
--set freeze (the fork-snapshot issue): 256 MiB, 1 GiB and 4 GiB touched, frozen vs fork vs gdb,
  to show the fork freeze growing with page tables only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' support package

from support.victims import build_victim  # noqa: E402

SNAPD = [str(Path(sys.executable).parent / "snapd")]

SETS = {
    "gcore": {
        "a: 1 GiB touched": (1024, 1024),
        "b: 2 GiB mapped, 16 MiB touched": (2048, 16),
        "c: 64 MiB service": (64, 64),
    },
    "freeze": {
        "256 MiB touched": (256, 256),
        "1 GiB touched": (1024, 1024),
        "4 GiB touched": (4096, 4096),
    },
}


@dataclass
class Run:
    seconds: float
    freeze_ms: float
    disk_bytes: int
    apparent: int


class Victim:
    def __init__(self, exe: Path, alloc: int, touch: int) -> None:
        self.p = subprocess.Popen(
            [str(exe), str(alloc), str(touch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.p.stdout and self.p.stdin
        line = self.p.stdout.readline()
        assert line.startswith("ready"), line
        self.pid = self.p.pid

    def ask(self, c: str) -> int:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(c)
        self.p.stdin.flush()
        return int(self.p.stdout.readline())

    def stall_ms(self) -> float:
        # The heartbeat records a stall at its first tick after the resume: give it a few.
        time.sleep(0.02)
        return self.ask("s") / 1000.0

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


def run_tool(tool: str, victim: Victim, outdir: Path) -> Run:
    prefix = outdir / f"core-{tool}"
    if tool == "gdb":
        argv = [
            "gdb",
            "-nx",
            "-batch",
            "-p",
            str(victim.pid),
            "-ex",
            "set debuginfod enabled off",
            "-ex",
            f"gcore {prefix}.{victim.pid}",
        ]
    else:
        mode = tool.split("-", 1)[1]
        argv = [*SNAPD, "gcore", "--snapshot", mode, "-o", str(prefix), str(victim.pid)]
    victim.stall_ms()  # reset
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True)
    el = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{tool} failed: {r.stderr.strip()}")
    freeze = victim.stall_ms()
    core = Path(f"{prefix}.{victim.pid}")
    st = core.stat()
    core.unlink()
    return Run(el, freeze, st.st_blocks * 512, st.st_size)


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp/snapd-bench")
    ap.add_argument("--snapshot", choices=["frozen", "fork", "both"], default="frozen")
    ap.add_argument("--set", choices=sorted(SETS), default="gcore")
    ap.add_argument("--only", help="run scenarios whose name starts with this")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (ptrace of another user's process)", file=sys.stderr)
        return 2
    outdir = Path(args.dir)
    outdir.mkdir(parents=True, exist_ok=True)
    exe = build_victim("bigmem", "-O1", "-fomit-frame-pointer")
    modes = ["frozen", "fork"] if args.snapshot == "both" else [args.snapshot]
    tools = ["gdb", *[f"snapd-{m}" for m in modes]]
    print(
        f"# snapd gcore vs gdb gcore ({shutil.which('gdb')}); {args.rounds} alternated rounds after a "
        f"warm-up; output in {outdir}; medians"
    )
    for name, (alloc, touch) in SETS[args.set].items():
        if args.only and not name.startswith(args.only):
            continue
        v = Victim(exe, alloc, touch)
        try:
            for tool in tools:  # warm-up: page cache, gdb's symbol loading, our imports
                run_tool(tool, v, outdir)
            runs: dict[str, list[Run]] = {t: [] for t in tools}
            for _ in range(args.rounds):
                for tool in tools:
                    runs[tool].append(run_tool(tool, v, outdir))
        finally:
            v.close()
        print(f"\n## {name}")
        print(f"{'tool':<14} {'seconds':>9} {'freeze ms':>10} {'on disk':>12} {'apparent':>12}")
        med: dict[str, Run] = {}
        for tool in tools:
            rs = runs[tool]
            med[tool] = Run(
                statistics.median(r.seconds for r in rs),
                statistics.median(r.freeze_ms for r in rs),
                int(statistics.median(r.disk_bytes for r in rs)),
                rs[0].apparent,
            )
            m = med[tool]
            print(
                f"{tool:<14} {m.seconds:9.3f} {m.freeze_ms:10.1f} {fmt_bytes(m.disk_bytes):>12} "
                f"{fmt_bytes(m.apparent):>12}"
            )
        g = med["gdb"]
        for tool in tools[1:]:
            m = med[tool]
            print(
                f"ratio gdb/{tool}: time {g.seconds / m.seconds:.2f}x, "
                f"freeze {g.freeze_ms / max(m.freeze_ms, 0.001):.2f}x, "
                f"disk {g.disk_bytes / max(m.disk_bytes, 1):.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
