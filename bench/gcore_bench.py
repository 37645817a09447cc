#!/usr/bin/env python3
"""snapd gcore vs gdb's gcore on the same victims, alternated in one run.

For each scenario the victim (tests/victims/bigmem.c) touches a known amount of memory and runs
a heartbeat thread that times its own stalls: that is the freeze the target saw. Each tool runs
as a user would run it (a fresh process, start-up included), writing into the same directory;
cores are deleted between runs. After a warm-up of each tool, runs alternate gdb/snapd so that
page-cache and disk state affect both alike (the order rotated each round: what one run frees,
the next finds warm); the median of the rounds is printed with ratios.

    sudo .venv/bin/python bench/gcore_bench.py [--rounds 3] [--dir /var/tmp/snapd-bench]
         [--snapshot frozen|fork|auto|both] [--set gcore|freeze|small] [--variants V,V...]

--set gcore (the gcore issue): (a) 1 GiB touched, (b) 2 GiB mapped / 16 MiB touched, (c) 64 MiB.
--set freeze (the fork-snapshot issue): 256 MiB, 1 GiB and 4 GiB touched, frozen vs fork vs gdb,
  to show the fork freeze growing with page tables only.
--set small: 4, 16, 64 and 256 MiB touched, for where "auto" should switch from frozen to fork.
--variants: snapd configurations to compare, each MODE[/METHOD[/BUDGET[/HEAD]]] (e.g.
  frozen/direct/0 for O_DIRECT with no staging, frozen/direct+buffered, frozen/direct//all for all
  the staging faulted in before the halt, fork/mmap); passed as $SNAPD_COPY_METHOD,
  $SNAPD_STAGING_BUDGET and $SNAPD_STAGING_HEAD.

First it prints the machine (CPU, AVX-512, the calibration snapd makes of the output directory's
file system: memory, O_DIRECT, buffered, both at once, mmap); for each scenario, the strategy
snapd chose and the throughputs that chose it (its `-v` lines), then the medians: seconds end to
end, the freeze the victim saw, disk use, and the peak RSS of the dumping process (staging).
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
    "small": {
        "4 MiB touched": (4, 4),
        "16 MiB touched": (16, 16),
        "64 MiB touched": (64, 64),
        "256 MiB touched": (256, 256),
    },
}


@dataclass
class Run:
    seconds: float
    freeze_ms: float
    disk_bytes: int
    apparent: int
    maxrss: int = 0  # bytes, of the dumping process
    verbose: str = ""


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
    prefix = outdir / f"core-{tool.replace('/', '_')}"
    # As installed, snapd's modules are byte-compiled: do not let the environment forbid the
    # cache (the warm-up run writes it), or every run compiles them again (~60 ms here).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
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
        mode, method, budget, head = ([*tool.split("/", 3), "", "", ""])[:4]
        if method:
            env["SNAPD_COPY_METHOD"] = method
        if budget:
            env["SNAPD_STAGING_BUDGET"] = budget
        if head:
            env["SNAPD_STAGING_HEAD"] = head
        argv = [*SNAPD, "gcore", "-v", "--snapshot", mode, "-o", str(prefix), str(victim.pid)]
    victim.stall_ms()  # reset
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, text=True, env=env)
        _, status, ru = os.wait4(p.pid, 0)  # its own peak RSS, which Popen.wait() would drop
        p.returncode = os.waitstatus_to_exitcode(status)
        el = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        text, errtext = out.read(), err.read()
    if p.returncode != 0:
        raise SystemExit(f"{tool} failed: {errtext.strip()}")
    freeze = victim.stall_ms()
    core = Path(f"{prefix}.{victim.pid}")
    st = core.stat()
    core.unlink()
    return Run(el, freeze, st.st_blocks * 512, st.st_size, ru.ru_maxrss * 1024, text if tool != "gdb" else "")


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


CALIBRATE = """
import json, sys
from dataclasses import asdict
from snapd.core import calibrate
print(json.dumps([asdict(calibrate.measure_dir(sys.argv[1])) for _ in range(3)]))
"""


def interpreter_start() -> tuple[float, float]:
    """Seconds for this venv's Python to start and exit, with its site (every .pth of the
    site-packages it sees: some machines add costly ones) and without (-S); best of 5. Part of
    every snapd run's end-to-end time and none of gdb's."""

    def best(*flags: str) -> float:
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *flags, "-c", "pass"], check=True)
            t.append(time.perf_counter() - t0)
        return min(t)

    return best(), best("-S")


def machine(outdir: Path) -> list[str]:
    """CPU, AVX-512, and snapd's own calibration of ``outdir``'s file system (medians of 3), run
    in a child so that this process stays small (a child's peak RSS starts from its parent's)."""
    model = "unknown"
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    out = subprocess.run(
        [sys.executable, "-c", CALIBRATE, str(outdir)], capture_output=True, text=True, check=True
    )
    cals = json.loads(out.stdout)
    fields = ["memory", "populate", "direct", "buffered", "split", "mmap"]
    rates = []
    for f in fields:
        v = [c["rates"][f] / 1e6 for c in cals]
        rates.append(f"{f} {statistics.median(v):,.0f} MB/s ({min(v):,.0f}-{max(v):,.0f})")
    med = {f: statistics.median(c["rates"][f] for c in cals) / 1e6 for f in fields}
    avx = "yes" if "avx512f" in flags else "no"
    with_site, bare = interpreter_start()
    return [
        "| CPU | AVX-512 | file system | O_DIRECT MB/s | buffered MB/s | both MB/s | memory MB/s |",
        "|---|---|---|---|---|---|---|",
        f"| {model}, {os.cpu_count()} CPUs | {avx} | {cals[0]['fstype']} | {med['direct']:,.0f} | "
        f"{med['buffered']:,.0f} | {med['split']:,.0f} | {med['memory']:,.0f} |",
        f"CPU: {model}, {os.cpu_count()} CPUs, AVX-512 {avx}",
        f"disk: {cals[0]['fstype']} ({cals[0]['key']}); load average {os.getloadavg()[0]:.1f}",
        f"calibration (3 runs, {statistics.median(c['seconds'] for c in cals) * 1e3:.0f} ms each; "
        f"median (min-max)): {', '.join(rates)}",
        f"Python start-up (in every snapd figure): {with_site * 1e3:.0f} ms, of which the site and"
        f" its .pth files {max(0.0, with_site - bare) * 1e3:.0f} ms",
    ]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp/snapd-bench")
    ap.add_argument("--snapshot", choices=["frozen", "fork", "auto", "both"], default="frozen")
    ap.add_argument("--variants", help="comma-separated MODE[/METHOD[/BUDGET]] (see above)")
    ap.add_argument("--set", choices=sorted(SETS), default="gcore")
    ap.add_argument("--only", help="run scenarios whose name starts with this")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (ptrace of another user's process)", file=sys.stderr)
        return 2
    outdir = Path(args.dir)
    outdir.mkdir(parents=True, exist_ok=True)
    # named for this run (support.victims): no rule of a daemon running beside watches its comm
    exe = build_victim("bigmem", "-O1", "-fomit-frame-pointer")
    if args.variants:
        variants = args.variants.split(",")
    else:
        variants = ["frozen", "fork"] if args.snapshot == "both" else [args.snapshot]
    tools = ["gdb", *variants]
    print(
        f"# snapd gcore vs gdb gcore ({shutil.which('gdb')}); {args.rounds} alternated rounds after a "
        f"warm-up; output in {outdir}; medians (min-max)"
    )
    for line in machine(outdir):
        print(f"# {line}")
    table: list[str] = []
    for name, (alloc, touch) in SETS[args.set].items():
        if args.only and not name.startswith(args.only):
            continue
        v = Victim(exe, alloc, touch)
        try:
            for tool in tools:  # warm-up: page cache, gdb's symbol loading, our imports
                run_tool(tool, v, outdir)
            runs: dict[str, list[Run]] = {t: [] for t in tools}
            for r in range(args.rounds):
                # Rotated each round: a run leaves memory behind (freed page cache, freed
                # staging) that the next one finds warm; no tool may always follow the same one.
                for tool in tools[r % len(tools) :] + tools[: r % len(tools)]:
                    runs[tool].append(run_tool(tool, v, outdir))
        finally:
            v.close()
        print(f"\n## {name}")
        for tool in tools[1:]:
            print(f"{tool}, last run:")
            for line in runs[tool][-1].verbose.splitlines():
                print(f"    {line}")
        head = f"{'tool':<26} {'seconds':>19} {'freeze ms':>19} {'on disk':>12} {'apparent':>12}"
        print(f"{head} {'peak RSS':>10}")
        med: dict[str, Run] = {}
        for tool in tools:
            rs = runs[tool]
            med[tool] = Run(
                statistics.median(r.seconds for r in rs),
                statistics.median(r.freeze_ms for r in rs),
                int(statistics.median(r.disk_bytes for r in rs)),
                rs[0].apparent,
                int(statistics.median(r.maxrss for r in rs)),
            )
            m = med[tool]
            secs = f"{m.seconds:.3f} ({min(r.seconds for r in rs):.2f}-{max(r.seconds for r in rs):.2f})"
            frz = f"{m.freeze_ms:.1f} ({min(r.freeze_ms for r in rs):.0f}-{max(r.freeze_ms for r in rs):.0f})"
            print(
                f"{tool:<26} {secs:>19} {frz:>19} {fmt_bytes(m.disk_bytes):>12} "
                f"{fmt_bytes(m.apparent):>12} {m.maxrss / 2**20:>6.0f} MiB"
            )
        g = med["gdb"]
        for tool in tools[1:]:
            m = med[tool]
            ratio = g.seconds / m.seconds
            print(
                f"ratio gdb/{tool}: time {ratio:.2f}x, "
                f"freeze {g.freeze_ms / max(m.freeze_ms, 0.001):.2f}x, "
                f"disk {g.disk_bytes / max(m.disk_bytes, 1):.2f}x"
            )
            table.append(
                f"| {name} | {tool} | {g.seconds:.2f} | {m.seconds:.2f} ({ratio:.2f}x) | "
                f"{g.freeze_ms:.0f} ms | {m.freeze_ms:.0f} ms | {m.maxrss / 2**20:.0f} MiB |"
            )
    print("\n# for docs/gcore.md")
    print("| scenario | snapd | gdb s | snapd s | gdb freeze | snapd freeze | snapd peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
