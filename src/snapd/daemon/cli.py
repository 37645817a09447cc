"""``snapd daemon``: options, logging, then :class:`~snapd.daemon.service.Daemon` in the
foreground."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from snapd.daemon import reportflags
from snapd.paths import DEFAULT_RULES, DEFAULT_SOCKET, DEFAULT_STATE
from snapd.store import Retention
from snapd.text import SafeFormatter


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="snapd daemon", description="Run the snapshot daemon (foreground).")
    p.add_argument("--rules", default=DEFAULT_RULES, help=f"rules directory (default {DEFAULT_RULES})")
    p.add_argument("--state", default=DEFAULT_STATE, help=f"catalog and cores (default {DEFAULT_STATE})")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--max-use", help="retention: most disk the cores may use (e.g. 4G, 10%%)")
    p.add_argument("--keep-free", help="retention: disk to leave free (e.g. 1G, 15%%)")
    p.add_argument("--max-age", help="retention: delete cores older than this (e.g. 7d)")
    p.add_argument("--cores-per-hour", type=int, default=60, help="daemon-wide cap (default 60)")
    p.add_argument("--foreground", action="store_true", help="accepted for clarity; always foreground")
    reportflags.add_flags(p)
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(levelname)s: %(message)s"))  # comm etc. are the target's
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if os.geteuid() != 0:
        print("snapd daemon: must run as root (eBPF, ptrace of other users' processes)", file=sys.stderr)
        return 1
    conf = {
        k: v
        for k, v in (("MaxUse", args.max_use), ("KeepFree", args.keep_free), ("MaxAge", args.max_age))
        if v
    }
    retention = Retention.from_mapping(conf) if conf else None
    os.makedirs(os.path.dirname(os.path.abspath(args.socket)), mode=0o755, exist_ok=True)
    if not os.path.isdir(args.rules):
        print(
            f"snapd daemon: {args.rules}: no such rules directory; create it (mkdir -p) and "
            "drop rule files there",
            file=sys.stderr,
        )
        return 1
    from snapd.daemon.service import Daemon  # loads the probe layer: after the cheap checks

    reports = reportflags.settings(args)
    d = Daemon(args.rules, args.state, args.socket, retention, args.cores_per_hour, reports=reports)
    return d.run()
