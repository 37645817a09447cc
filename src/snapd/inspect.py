"""``snapd inspect CORE``: what a core file holds (snapd.core.inspect), or with ``--stacks`` where
every thread was (snapd.report). Takes plain cores, compressed cores and bundles (snapd.ship).

An entry point like snapd/cli.py: it combines stages that must not import each other.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from snapd.core.inspect import read_core, render
from snapd.errors import SnapdError
from snapd.ship.opencore import open_core
from snapd.text import safe


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="snapd inspect", description="Show what a core file holds.")
    p.add_argument("cores", nargs="+", metavar="CORE")
    p.add_argument("--json", action="store_true", help="one JSON object per core")
    p.add_argument("--stacks", action="store_true", help="where every thread was: native and Python stacks")
    p.add_argument("--exe", action="append", default=[], metavar="PATH", help="binaries (file or directory)")
    p.add_argument("--tid", type=int, help="with --stacks: the thread to show first, as the one that fired")
    p.add_argument("--deadline", type=float, default=30.0, help="with --stacks: seconds (default: 30)")
    args = p.parse_args(argv)

    rc = 0
    for path in args.cores:
        try:
            if args.stacks:
                rc |= _stacks(path, args)
                continue
            with open_core(path) as plain:
                v = read_core(plain)
            if plain != path:  # unpacked to a temp file: show the file given and its real cost
                v.path, v.disk_bytes = path, os.stat(path).st_blocks * 512
        except SnapdError as err:  # CoreFileError, or a bundle that cannot be unpacked
            print(f"snapd inspect: {safe(err)}", file=sys.stderr)
            rc = 1
            continue
        print(json.dumps(asdict(v)) if args.json else render(v))
    return rc


def _stacks(path: str, args: argparse.Namespace) -> int:
    """The report of ``path``; a bundle is unpacked and its binaries are searched first (they
    are the files that ran, wherever it is read), as ``snapd debug`` gives them to gdb."""
    from snapd.report.cli import show_stacks
    from snapd.ship.debug import opened

    with opened(path) as t:
        search = [*args.exe, *([t.exe] if t.exe else []), *t.solib_dirs]
        return show_stacks(t.core, args.json, search, args.tid, args.deadline, shown=path, exe=t.exe)
