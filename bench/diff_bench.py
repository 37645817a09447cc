#!/usr/bin/env python3
"""snapd diff vs cmp -l on the same pairs of cores, alternated in one run.

For each scenario the victim (tests/victims/diff_victim.c) touches a known amount of memory;
snapd's own writer takes core A, the victim rewrites 1% of the touched pages (one u64 each, so
`cmp -l` prints about one line per page), and the writer takes core B. Then each tool runs as a
user would run it (a fresh process, start-up included) on the same two files: after a warm-up
of each, rounds alternate cmp/snapd so that the page cache treats both alike (the cores were
just written, so both read them from memory). Printed: medians of wall time, GB/s of compared
resident memory (the address range holding data in either core, read on both sides), the
ratio to cmp, and each tool's peak RSS (wait4's ru_maxrss, by bench/peak_rss.c).

    sudo .venv/bin/python bench/diff_bench.py [--rounds 5] [--dir /var/tmp/snapd-bench-diff]

(a) 1 GiB mapped, 1 GiB touched, 1% of pages changed; (b) 2 GiB mapped, 16 MiB touched, 1% of
those changed: a sparse core, where cmp reads 2 GiB of holes and snapd skips them. The goal is
>= 1 GB/s, faster than cmp, and a peak RSS that does not grow with the core.
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
PAGE = 4096

SCENARIOS = {
    "a: 1 GiB dense, 1% changed": (1024, 1024),
    "b: 2 GiB mapped, 16 MiB touched, 1% changed": (16, 2048),
}


@dataclass
class Run:
    seconds: float
    cpu: float  # user + system seconds of the tool's process
    rss_kib: int
    out: str


def timed(argv: list[str], ok: tuple[int, ...], peak_rss: Path) -> Run:
    """Run argv as a fresh process under peak_rss: wall time, and its own peak RSS."""
    rss_file = peak_rss.with_suffix(".out")
    with tempfile.TemporaryFile() as out:  # cmp -l to /dev/null would stop at the first difference
        t0 = time.monotonic()
        p = subprocess.run([str(peak_rss), str(rss_file), *argv], stdout=out, stderr=subprocess.PIPE)
        el = time.monotonic() - t0
        if p.returncode not in ok:
            raise SystemExit(f"{argv[0]} failed ({p.returncode}): {p.stderr.decode().strip()}")
        out.seek(0)
        text = out.read(1 << 20).decode(errors="replace")
    rss, cpu = rss_file.read_text().split()
    return Run(el, float(cpu), int(rss), text)


def make_cores(exe: Path, touch: int, mapped: int, outdir: Path) -> tuple[Path, Path, int]:
    from snapd.core import write_core

    p = subprocess.Popen(
        [str(exe), str(touch), str(mapped)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdin and p.stdout
    try:
        line = p.stdout.readline()
        assert line.startswith("ready"), line
        a, b = outdir / "a.core", outdir / "b.core"
        for f in (a, b):
            f.unlink(missing_ok=True)
        write_core(p.pid, str(a))
        k = (touch << 20) // PAGE // 100
        p.stdin.write(f"w {k}\n")
        p.stdin.flush()
        assert p.stdout.readline().startswith("ok")
        write_core(p.pid, str(b))
        return a, b, k
    finally:
        p.kill()
        p.wait()


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp/snapd-bench-diff")
    ap.add_argument("--only", help="run scenarios whose name starts with this")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (the cores are written with ptrace)", file=sys.stderr)
        return 2
    cmp = shutil.which("cmp")
    if not cmp:
        print("bench: cmp (diffutils) is not installed", file=sys.stderr)
        return 2
    outdir = Path(args.dir)
    outdir.mkdir(parents=True, exist_ok=True)
    exe = build_victim("diff_victim", "-O1", "-fomit-frame-pointer")
    peak_rss = build_victim(ROOT / "bench" / "peak_rss.c", "-O1", "-g0", "-fomit-frame-pointer")
    print(
        f"# snapd diff vs {cmp} -l on the same cores (written by snapd, in the page cache); "
        f"{args.rounds} alternated rounds after a warm-up; medians"
    )
    for name, (touch, mapped) in SCENARIOS.items():
        if args.only and not name.startswith(args.only):
            continue
        a, b, k = make_cores(exe, touch, mapped, outdir)
        tools = {
            "cmp -l": ([cmp, "-l", str(a), str(b)], (0, 1)),
            "snapd diff": ([*SNAPD, "diff", "--json", str(a), str(b)], (0,)),
            "snapd diff -j1": ([*SNAPD, "diff", "--json", "--workers", "1", str(a), str(b)], (0,)),
        }
        for argv_, ok in tools.values():  # warm-up: page cache, imports
            timed(argv_, ok, peak_rss)
        runs: dict[str, list[Run]] = {t: [] for t in tools}
        for _ in range(args.rounds):
            for t, (argv_, ok) in tools.items():
                runs[t].append(timed(argv_, ok, peak_rss))
        d = json.loads(runs["snapd diff"][-1].out)
        compared = d["stats"]["compared_bytes"]
        engine = statistics.median(json.loads(r.out)["stats"]["seconds"] for r in runs["snapd diff"])
        engine_cpu = statistics.median(json.loads(r.out)["stats"]["cpu_seconds"] for r in runs["snapd diff"])
        st_a = a.stat()
        print(f"\n{name}")
        print(
            f"  cores: {mib(st_a.st_size)} apparent, {mib(st_a.st_blocks * 512)} on disk; compared "
            f"{mib(compared)} resident; {d['summary']['changed_pages']} pages changed (victim rewrote {k})"
        )
        med = {t: statistics.median(r.seconds for r in rs) for t, rs in runs.items()}
        cpu = {t: statistics.median(r.cpu for r in rs) for t, rs in runs.items()}
        rss = {t: max(r.rss_kib for r in rs) for t, rs in runs.items()}
        for t in tools:
            print(
                f"  {t:<15} {med[t]:7.3f} s  {compared / med[t] / 1e9:6.2f} GB/s   CPU {cpu[t]:6.3f} s  "
                f"peak RSS {rss[t] / 1024:6.1f} MiB"
            )
        rate = compared / engine / 1e9
        print(
            f"  snapd diff's engine alone (in its process): {engine:.3f} s, {rate:.2f} GB/s, "
            f"CPU {engine_cpu:.3f} s"
        )
        for t in tools:
            if t.startswith("snapd"):
                print(
                    f"  ratio: {t} is {med['cmp -l'] / med[t]:.2f}x the speed of cmp -l "
                    f"(CPU: cmp -l uses {cpu['cmp -l'] / cpu[t]:.2f}x what it uses)"
                )
        for f in (a, b):
            f.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
