"""``snapd daemon``: options, the configuration file, logging, then
:class:`~snapd.daemon.service.Daemon` in the foreground. Options override the file."""

from __future__ import annotations

import argparse
import os
import sys

from snapd.daemon import reportflags
from snapd.daemon.config import ConfigFileError, load_config
from snapd.daemon.logsetup import configure
from snapd.paths import DEFAULT_CONFIG, DEFAULT_RULES, DEFAULT_SOCKET, DEFAULT_STATE

DEFAULT_CORES_PER_HOUR = 60


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="snapd daemon", description="Run the snapshot daemon (foreground).")
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"daemon settings (default {DEFAULT_CONFIG}, if it exists; see docs/catalog.md)",
    )
    p.add_argument("--rules", default=DEFAULT_RULES, help=f"rules directory (default {DEFAULT_RULES})")
    p.add_argument("--state", default=DEFAULT_STATE, help=f"catalog and cores (default {DEFAULT_STATE})")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--max-use", help="retention: most disk the cores may use (e.g. 4G, 10%%)")
    p.add_argument("--keep-free", help="retention: disk to leave free (e.g. 1G, 15%%)")
    p.add_argument("--max-age", help="retention: delete cores older than this (e.g. 7d)")
    p.add_argument("--cores-per-hour", type=int, help=f"daemon-wide cap (default {DEFAULT_CORES_PER_HOUR})")
    p.add_argument("--foreground", action="store_true", help="accepted for clarity; always foreground")
    reportflags.add_flags(p)
    args = p.parse_args(argv)
    configure(sys.stderr)  # comm etc. are the target's: escaped; ISO times unless journald reads
    if os.geteuid() != 0:
        print("snapd daemon: must run as root (eBPF, ptrace of other users' processes)", file=sys.stderr)
        return 1
    try:
        config = load_config(args.config)
    except ConfigFileError as err:
        for line in err.errors:
            print(f"snapd daemon: {line}", file=sys.stderr)
        return 1
    flags = {
        k: v
        for k, v in (("MaxUse", args.max_use), ("KeepFree", args.keep_free), ("MaxAge", args.max_age))
        if v
    }
    retention = config.retention_with(flags)
    per_hour = args.cores_per_hour or config.cores_per_hour or DEFAULT_CORES_PER_HOUR
    os.makedirs(os.path.dirname(os.path.abspath(args.socket)), mode=0o755, exist_ok=True)
    if not os.path.isdir(args.rules):
        print(
            f"snapd daemon: {args.rules}: no such rules directory; create it (mkdir -p) and "
            "drop rule files there",
            file=sys.stderr,
        )
        return 1
    from snapd.daemon.service import Daemon  # loads the probe layer: after the cheap checks

    reports = reportflags.settings(args, config.report)
    d = Daemon(args.rules, args.state, args.socket, retention, per_hour, reports=reports, config=config)
    return d.run()
