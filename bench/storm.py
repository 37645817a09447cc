#!/usr/bin/env python3
"""The trigger storm, long form (tests/reliability/test_rel_storm.py runs it for ~10 s).

A victim calls getppid() as fast as it can for --seconds (default 30), every call matching a
rule with max_cores 3: the ring buffer overflows. Prints the calls made and their rate, what the
kernel fired and dropped, what the daemon read and suppressed, the cores taken, and the daemon's
CPU (utime+stime from /proc, as a share of one CPU), RSS, fds and threads before and after.

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
        print(f"max_cores held: {ok}; daemon CPU {r.cpu_share:.0%} of one CPU")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
