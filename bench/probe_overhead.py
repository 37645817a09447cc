#!/usr/bin/env python3
"""What a loaded syscall rule costs a process it does not target, beside bpftrace, same run.

A helper (C, built here) calls getppid() in a tight loop and reports ns per call. It runs with:
  baseline      nothing attached
  snapd         a snapd rule on getppid whose target (comm example-none) is not this process
  bpftrace      tracepoint:syscalls:sys_enter_getppid with the same filter (/comm == ".."/)
  raw_syscalls  bpftrace on raw_syscalls:sys_enter with that filter: every syscall pays (scale)
  snapd_any     a snapd `every: 1h, then: any` rule targeting another comm (raw_syscalls too)
Configurations alternate for several rounds; the median per configuration is reported, and the
added ns/call as a ratio to bpftrace's. Then event->poll latency: the helper makes one matching
getppid every millisecond and the time from the kernel's timestamp to Probes.poll() returning it
is collected (p50/p99).

Then the uprobe and USDT rows: a hot user function (and a USDT site) called in a loop by a
targeted process, with a snapd `function` / `usdt` rule on it (a `when` no call passes: the whole
evaluation, no firing) beside bpftrace's `uprobe:BIN:FN /pid == N/ {}` (`usdt:BIN:trg:hot`), best
of the rounds; the ratio compares the time each adds per call (the trap dominates it: see
bench/uprobe_overhead.py for the single-step case and the programs' own run times).

Run as root: .venv/bin/python bench/probe_overhead.py [--rounds N] [--calls N] [--ucalls N]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' support package

from support.victims import build_victim

HELPER_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                             return t.tv_sec * 1000000000LL + t.tv_nsec; }
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    if (strcmp(argv[1], "loop") == 0) {
        long long t0 = now();
        for (long i = 0; i < n; i++) syscall(SYS_getppid);
        printf("%.2f\n", (double)(now() - t0) / n);
    } else {  /* paced: one call per millisecond */
        printf("ready\n"); fflush(stdout);
        char go[8];
        if (!fgets(go, sizeof go, stdin)) return 1;  /* start once the rule is loaded */
        struct timespec ms = {0, 1000000};
        for (long i = 0; i < n; i++) { syscall(SYS_getppid); nanosleep(&ms, NULL); }
    }
    return 0;
}
"""

FILTER_COMM = "example-none"


def build(tmp: Path) -> Path:
    src = tmp / "overhead_helper.c"
    src.write_text(HELPER_C)
    return build_victim(src, "-O2", "-g0", "-fomit-frame-pointer")


def ns_per_call(helper: Path, calls: int) -> float:
    out = subprocess.run([str(helper), "loop", str(calls)], capture_output=True, text=True, check=True)
    return float(out.stdout)


class Bpftrace:
    def __init__(self, program: str) -> None:
        self.proc = subprocess.Popen(
            ["bpftrace", "-e", program], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        seen = []
        while True:  # warnings (e.g. about RLIMIT_MEMLOCK) may come first
            line = self.proc.stdout.readline()
            if not line:
                self.close()
                raise SystemExit("bpftrace failed: " + " | ".join(seen))
            if line.startswith("Attaching"):
                break
            seen.append(line.strip())
        time.sleep(1.0)  # "Attaching" is printed before the attach completes

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure_overhead(helper: Path, rounds: int, calls: int) -> dict[str, float]:
    from snapd.probe import Probes
    from snapd.rules import parse_rule

    rule, errors = parse_rule(
        f"target: {{comm: {FILTER_COMM}}}\ntrigger: {{syscall: getppid}}\n", "bench.yaml"
    )
    assert rule is not None, errors
    anyrule, errors = parse_rule(
        f"name: any\ntarget: {{comm: {FILTER_COMM}}}\ntrigger: {{every: 1h, then: any}}\n", "any.yaml"
    )
    assert anyrule is not None, errors
    tp_filter = f'/comm == "{FILTER_COMM}"/ {{ @c = count(); }}'
    results: dict[str, list[float]] = {
        "baseline": [],
        "snapd": [],
        "bpftrace": [],
        "raw_syscalls": [],
        "snapd_any": [],
    }
    probes = Probes()
    try:
        for _ in range(rounds):
            results["baseline"].append(ns_per_call(helper, calls))
            probes.load(rule)
            results["snapd"].append(ns_per_call(helper, calls))
            probes.unload(rule.name)
            bt = Bpftrace(f"tracepoint:syscalls:sys_enter_getppid {tp_filter}")
            try:
                results["bpftrace"].append(ns_per_call(helper, calls))
            finally:
                bt.close()
            bt = Bpftrace(f"tracepoint:raw_syscalls:sys_enter {tp_filter}")
            try:
                results["raw_syscalls"].append(ns_per_call(helper, calls))
            finally:
                bt.close()
            probes.load(anyrule)  # every + then: any, another process targeted
            results["snapd_any"].append(ns_per_call(helper, calls))
            probes.unload(anyrule.name)
    finally:
        probes.close()
    return {k: statistics.median(v) for k, v in results.items()}


def measure_latency(helper: Path, events: int) -> list[float]:
    from snapd.probe import Probes
    from snapd.rules import parse_rule

    proc = subprocess.Popen(
        [str(helper), "paced", str(events + 200)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    lat: list[float] = []
    probes = Probes()
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        rule, errors = parse_rule(f"target: {{pid: {proc.pid}}}\ntrigger: {{syscall: getppid}}\n", "lat.yaml")
        assert rule is not None, errors
        probes.load(rule)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while len(lat) < events and time.monotonic() < deadline:
            for e in probes.poll(100):
                lat.append((time.monotonic_ns() - e.time_ns) / 1000.0)
    finally:
        probes.close()
        proc.kill()
        proc.wait()
    return lat


def measure_uprobes(rounds: int, calls: int) -> None:
    """The uprobe/USDT rows, through snapd's own Probes and rules."""
    import contextlib
    from collections.abc import Iterator

    import uprobe_overhead as uo  # bench/, beside this script
    from snapd.probe.probes import Probes
    from snapd.rules import parse_rule

    with tempfile.TemporaryDirectory() as d, Probes() as probes:
        exe = uo.build(Path(d))
        probes.compile()
        up_fd = probes._uprobes._entry_fd  # snapd_uprobe: its run time per hit (bpf_stats)
        for mode, trig, bt_probe in (
            ("call", f"function: {{binary: {exe}, symbol: trg_hot}}", f"uprobe:{exe}:trg_hot"),
            ("usdt", f"usdt: {{binary: {exe}, probe: 'trg:hot'}}", f"usdt:{exe}:trg:hot"),
        ):

            @contextlib.contextmanager
            def nothing(pid: int, other: int) -> Iterator[None]:
                yield None

            @contextlib.contextmanager
            def snapd(pid: int, other: int, trig: str = trig) -> Iterator[uo.Stats]:
                text = (
                    f"name: bench\ntarget: {{pid: {pid}}}\ntrigger:\n  {trig}\n  when: arg0 == {uo.NEVER}\n"
                )
                rule, errs = parse_rule(text.encode(), "bench.yaml")
                assert rule is not None, errs
                probes.load(rule)
                try:
                    yield lambda: uo.prog_stats(os.getpid(), [up_fd])
                finally:
                    probes.unload("bench")

            @contextlib.contextmanager
            def bpftrace(pid: int, other: int, probe: str = bt_probe) -> Iterator[uo.Stats]:
                with uo.bpftrace(probe, pid) as stats:
                    yield stats

            best: dict[str, float] = {}
            per_hit: dict[str, list[float]] = {"snapd": [], "bpftrace": []}
            for _ in range(rounds):
                for name, attach in (("baseline", nothing), ("snapd", snapd), ("bpftrace", bpftrace)):
                    ns, run = uo.run_one(exe, mode, calls, attach)  # type: ignore[arg-type]
                    best[name] = min(best.get(name, ns), ns)
                    if run is not None:
                        per_hit[name].append(run)
            base = best["baseline"]
            added = {k: max(best[k] - base, 0.01) for k in ("snapd", "bpftrace")}
            what = "trg_hot() (function)" if mode == "call" else "DTRACE_PROBE1(trg, hot) (usdt)"
            print(f"{what} in a targeted process, best of {rounds} rounds x {calls} calls:")
            for k in ("baseline", "snapd", "bpftrace"):
                extra = "" if k == "baseline" else f"   (+{best[k] - base:7.1f} ns added)"
                print(f"  {k:<13} {best[k]:8.1f} ns/call{extra}")
            ratio = added["snapd"] / added["bpftrace"]
            print(f"  ratio snapd/bpftrace added cost:      {ratio:.2f}x (goal <= 1)")
            runs = {k: statistics.median(v) for k, v in per_hit.items() if v}
            if len(runs) == 2:
                print(
                    "  the program's own run time per hit (bpf_stats, median): "
                    f"snapd {runs['snapd']:.1f} ns, bpftrace {runs['bpftrace']:.1f} ns"
                )


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--ucalls", type=int, default=200_000, help="calls per uprobe/USDT measurement")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("probe_overhead: run as root (BPF)", file=sys.stderr)
        return 2
    if not shutil.which("bpftrace"):
        print("probe_overhead: bpftrace not found (apt-get install bpftrace)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        helper = build(Path(d))
        med = measure_overhead(helper, args.rounds, args.calls)
        base = med["baseline"]
        print(f"getppid() in an untargeted process, median of {args.rounds} rounds x {args.calls} calls:")
        for k in ("baseline", "snapd", "bpftrace", "raw_syscalls", "snapd_any"):
            extra = "" if k == "baseline" else f"   (+{med[k] - base:6.1f} ns added)"
            print(f"  {k:<13} {med[k]:7.1f} ns/call{extra}")
        added = {k: max(med[k] - base, 0.01) for k in ("snapd", "bpftrace", "raw_syscalls", "snapd_any")}
        print(
            f"  ratio snapd/bpftrace added cost:      {added['snapd'] / added['bpftrace']:.2f}x (goal <= 1)"
        )
        print(f"  ratio raw_syscalls/bpftrace added:    {added['raw_syscalls'] / added['bpftrace']:.2f}x")
        any_ratio = added["snapd_any"] / added["raw_syscalls"]
        print(f"  ratio snapd_any/raw_syscalls added:   {any_ratio:.2f}x (then: any)")
        print(f"  snapd slowdown vs baseline:           {med['snapd'] / base:.3f}x")
        lat = measure_latency(helper, args.events)
    if lat:
        print(
            f"event -> Probes.poll() latency over {len(lat)} events: p50 {pct(lat, 50):.0f} us, "
            f"p99 {pct(lat, 99):.0f} us, max {max(lat):.0f} us"
        )
    else:
        print("event -> poll latency: no events received")
    measure_uprobes(args.rounds, args.ucalls)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
