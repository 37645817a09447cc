"""``snapd daemon``'s flags for the reports and the ctl diffs, into one
:class:`~snapd.daemon.reports.ReportSettings` (a config file can fill the same record)."""

from __future__ import annotations

import argparse
import math

from snapd.daemon.reports import ReportSettings
from snapd.report import ReportLimits
from snapd.units import UnitError, parse_duration, parse_size

_D = ReportSettings()
_L = ReportLimits()


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 1 or more")
    return n


def _seconds(text: str) -> float:
    """``30``, ``2.5``, or a duration with a unit (``500ms``, ``1min``)."""
    try:
        s = float(text)
    except ValueError:
        try:
            s = parse_duration(text) / 1e9
        except UnitError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    if not (math.isfinite(s) and s > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, more than 0 (e.g. 30, 500ms)")
    return s


def _size(text: str) -> int:
    try:
        return parse_size(text, bare=True, minimum=64 << 20)
    except UnitError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reports (where every thread was, computed after each core) and ctl diff")
    g.add_argument("--no-reports", action="store_true", help="do not compute a report per core")
    g.add_argument(
        "--report-threads",
        type=_count,
        default=_L.max_threads,
        metavar="N",
        help=f"threads a report shows at most (default {_L.max_threads})",
    )
    g.add_argument(
        "--report-frames",
        type=_count,
        default=_L.max_frames,
        metavar="N",
        help=f"frames a thread shows at most (default {_L.max_frames})",
    )
    g.add_argument(
        "--report-deadline",
        type=_seconds,
        default=_L.deadline,
        metavar="SECONDS",
        help=f"a report still running then is killed and recorded failed (default {_L.deadline:g})",
    )
    g.add_argument(
        "--report-memory",
        type=_size,
        default=_L.memory,
        metavar="SIZE",
        help=f"address space of the report worker (default {_L.memory >> 30}GiB)",
    )
    g.add_argument(
        "--reports-at-once",
        type=_count,
        default=_D.at_once,
        metavar="N",
        help=f"reports computed at the same time (default {_D.at_once})",
    )
    g.add_argument(
        "--diff-deadline",
        type=_seconds,
        default=_D.diff_deadline,
        metavar="SECONDS",
        help=f"ctl diff and ctl series give up after this (default {_D.diff_deadline:g})",
    )


def settings(args: argparse.Namespace) -> ReportSettings:
    limits = ReportLimits(
        max_threads=args.report_threads,
        max_frames=args.report_frames,
        deadline=args.report_deadline,
        memory=args.report_memory,
    )
    return ReportSettings(
        limits=limits,
        at_once=args.reports_at_once,
        enabled=not args.no_reports,
        diff_deadline=args.diff_deadline,
    )
