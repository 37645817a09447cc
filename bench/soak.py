#!/usr/bin/env python3
"""The soak, long form (tests/reliability/test_rel_soak.py runs it for ~60 s).

Rules fire every few seconds for --minutes (default 30): an `every: 2s` timer with an
action.run, and a getppid rule held to one core per 3 s by min_interval (fork snapshots), while
retention deletes cores all along and `snapd ctl` is called twice a second. The daemon's open
fds, threads and RSS are read from /proc after a 10 s warm-up and at the end, RSS every minute.

Run as root: .venv/bin/python bench/soak.py [--minutes 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' support package

from support.daemon import DVictim, daemon_and_victims
from support.soak import DAEMON_ARGS, rules, run_soak
from support.victims import Victim, build_victim


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    args = p.parse_args()
    with daemon_and_victims() as (daemon, _work, started):
        exe = build_victim("daemon_victim")
        raw = Victim([str(exe), "4"])
        started.append(raw)
        v = DVictim(raw, exe)
        v.cmd("l 500000")
        for name, text in rules(v.pid).items():
            daemon.write_rule(name, text)
        daemon.start(*DAEMON_ARGS)
        r = run_soak(daemon, v, args.minutes * 60, sample_every=60.0)
        print(r.summary())
        leak = r.end.fds != r.start.fds or r.end.threads != r.start.threads
        print(f"fd/thread leak: {leak}; RSS growth {r.rss_growth_kib} KiB over {r.seconds / 60:.1f} min")
        return 1 if leak else 0


if __name__ == "__main__":
    raise SystemExit(main())
