#!/usr/bin/env python3
"""The trigger storm, long form (tests/reliability/test_rel_storm.py runs it for ~10 s).

A victim calls getppid() as fast as it can for --seconds (default 30), every call matching a
rule with max_cores 3. Prints the calls made and their rate, what the kernel fired, dropped and
muted (once the budget is booked the rule is muted in the kernel), what the daemon read and
suppressed, the cores taken, and the daemon's CPU (utime+stime from /proc, as a share of one
CPU; the goal is at most 5 %), RSS, fds and threads before and after; whether the kernel's
counters add up (calls == fired + dropped + muted).

Run as root: .venv/bin/python bench/storm.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' support package

from support.daemon import daemon_and_victims
from support.storm import MAX_CORES, rule_text, run_storm
from support.victims import Victim, build_victim


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()
    with daemon_and_victims() as (daemon, _work, started):
        v = Victim([str(build_victim("rel_storm"))])
        started.append(v)
        daemon.write_rule("storm.yaml", rule_text(v.pid))
        daemon.start("--cores-per-hour", "100000")
        r = run_storm(daemon, v, args.seconds)
        print(r.summary())
        ok = r.cores <= MAX_CORES and r.entries <= MAX_CORES
        p = r.status.get("probes", {})
        counted = p.get("kernel_fired", 0) + p.get("dropped", 0) + p.get("kernel_muted", 0)
        adds_up = counted == r.calls
        print(
            f"max_cores held: {ok}; kernel counters add up: {adds_up} ({counted} of {r.calls} calls); "
            f"daemon CPU {r.cpu_share:.1%} of one CPU (goal: at most 5%)"
        )
        return 0 if ok and adds_up and r.cpu_share <= 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
