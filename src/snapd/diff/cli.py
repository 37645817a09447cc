"""``snapd diff CORE_A CORE_B``: what changed in a process between two of its cores, offline."""

from __future__ import annotations

import argparse
import json
import sys

from snapd.diff import render
from snapd.diff.cores import DEFAULT_TOP, diff_cores
from snapd.diff.series import series

EPILOG = """\
Any two cores of one process: snapd's, gdb's gcore, or the kernel's own, plain, compressed or
bundled. Shows memory by content class, the mappings that were added, removed, grown or shrunk,
how many 4 KiB pages of each changed content, and the threads added and removed. With
--series, each core of a series against the next, as a trend table.
"""


def _positive(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 (all) or more")
    return n


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="snapd diff",
        description="Compare two cores of the same process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cores", nargs="+", metavar="CORE", help="CORE_A CORE_B, or a series with --series")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument(
        "--top",
        type=_positive,
        default=DEFAULT_TOP,
        metavar="N",
        help=f"list the N most changed mappings (default {DEFAULT_TOP}; 0: all)",
    )
    p.add_argument("--series", action="store_true", help="a trend table of CORE... in order")
    p.add_argument(
        "--workers",
        type=_positive,
        default=0,
        metavar="N",
        help="threads comparing memory (default 0: one per CPU we may use, at most 4)",
    )
    args = p.parse_args(argv)
    if args.series:
        if len(args.cores) < 2:
            p.error("--series needs two cores or more")
        s = series(args.cores, workers=args.workers or None)
        print(json.dumps(s.to_dict()) if args.json else s.text())
        return 0
    if len(args.cores) != 2:
        p.error(f"give two cores (CORE_A CORE_B), not {len(args.cores)}; or --series")
    d = diff_cores(args.cores[0], args.cores[1], top=args.top, workers=args.workers or None)
    print(json.dumps(d.to_dict()) if args.json else render.text(d))
    sys.stdout.flush()
    return 0
