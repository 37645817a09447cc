"""``snapd gcore``: the Linux counterpart of Solaris gcore(1)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from snapd import kernel
from snapd.content import AGGREGATES, CLASSES, MODIFIERS, parse_spec
from snapd.core.info import CoreInfo
from snapd.core.writer import SNAPSHOT_MODES, write_core
from snapd.errors import ContentError, SnapdError
from snapd.text import safe


def _parser() -> argparse.ArgumentParser:
    classes = "\n".join(f"  {k:<10} {v}" for k, v in {**AGGREGATES, **CLASSES, **MODIFIERS}.items())
    p = argparse.ArgumentParser(
        prog="snapd gcore",
        description="Write an ELF core file of each running process PID, which keeps running.",
        epilog=f"content classes (combine with + and -, e.g. default-shm, anon+elfhdr):\n{classes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", dest="prefix", default="core", help="write PREFIX.PID (default: core)")
    p.add_argument("-c", dest="content", default="default", help="content to include (default: default)")
    p.add_argument(
        "--snapshot",
        choices=SNAPSHOT_MODES,
        default="frozen",
        help="frozen: halt for the whole dump; fork: halt only to fork a copy",
    )
    p.add_argument(
        "--sync",
        action="store_true",
        help="fsync the core before publishing it (durable across a crash; slower)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say which kernel features the dump uses (and what falls back), and what each dump took",
    )
    p.add_argument("pids", nargs="+", metavar="PID", help="process id(s)")
    return p


class _Progress:
    """A one-line progress meter on a terminal, shown once a dump has taken more than a second."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.after = float(os.environ.get("SNAPD_PROGRESS_AFTER", "1.0"))
        self.t0 = time.monotonic()
        self.shown = False
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        el = now - self.t0
        if el < self.after or now - self.last < 0.2:
            return
        self.last = now
        rate = done / el if el else 0.0
        eta = (total - done) / rate if rate else 0.0
        sys.stdout.write(
            f"\r{self.name}: {done / 2**20:,.0f} / {total / 2**20:,.0f} MiB  "
            f"{rate / 2**20:,.0f} MiB/s  ETA {eta:4.1f}s "
        )
        sys.stdout.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()


def _stats(info: CoreInfo) -> str:
    mib = 2**20
    threads = f"{info.threads} thread" + ("s" if info.threads != 1 else "")
    return (
        f"{threads}, {info.dumped_mappings} of {info.mappings} mappings, "
        f"{info.memory_bytes / mib:,.1f} MiB copied, {info.disk_bytes / mib:,.1f} MiB on disk; "
        f"{info.snapshot} snapshot, halted {info.freeze_seconds * 1e3:,.1f} ms, "
        f"{info.elapsed_seconds * 1e3:,.0f} ms in all"
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = parse_spec(args.content)
    except ContentError as err:
        print(f"snapd gcore: {err}", file=sys.stderr)
        return 2
    pids = []
    for p in args.pids:
        if not p.isdigit() or int(p) <= 0:
            print(f"snapd gcore: '{p}' is not a process id", file=sys.stderr)
            return 2
        pids.append(int(p))
    if args.verbose:
        for probed in kernel.report(kernel.GCORE_FEATURES):
            print(f"snapd gcore: kernel {os.uname().release}: {probed.line()}", file=sys.stderr)
    failed = 0
    tty = sys.stdout.isatty()
    for pid in pids:
        path = f"{args.prefix}.{pid}"
        meter = _Progress(path) if tty else None
        try:
            # Like gcore(1) and the kernel, no fsync unless asked: the rename is atomic either
            # way, and the daemon, whose catalog must survive a crash, always syncs.
            info = write_core(pid, path, content=spec, snapshot=args.snapshot, progress=meter, sync=args.sync)
        except SnapdError as err:
            if os.environ.get("SNAPD_DEBUG") == "1":
                raise
            if meter:
                meter.clear()
            # The message may quote the target's or its tracer's comm (chosen by that process).
            print(f"snapd gcore: {safe(err)}", file=sys.stderr)
            failed += 1
            continue
        if meter:
            meter.clear()
        if info.fallback:
            print(
                f"snapd gcore: warning: pid {pid}: no fork snapshot: {info.fallback}; dumped in frozen mode",
                file=sys.stderr,
            )
        if args.verbose:
            print(f"snapd gcore: {path}: {_stats(info)}", file=sys.stderr)
        print(f"snapd gcore: {path} dumped")
    return 1 if failed else 0
