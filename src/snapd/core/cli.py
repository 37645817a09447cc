"""``snapd gcore``: the Linux counterpart of Solaris gcore(1)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from snapd.content import AGGREGATES, CLASSES, MODIFIERS, SnapshotMode, parse_spec
from snapd.core.info import CoreInfo
from snapd.core.writer import write_core
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
        choices=[m.value for m in SnapshotMode],
        default=SnapshotMode.FROZEN.value,
        help="frozen: halt while memory is copied; fork: halt only to fork a copy; "
        "auto: fork big processes, freeze small ones",
    )
    p.add_argument(
        "--staging-budget",
        metavar="SIZE",
        help="memory for frozen-mode staging, bytes (512M) or %% of MemAvailable (default 25%%)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say which kernel features the dump uses (and what falls back), and how the memory was copied",
    )
    p.add_argument(
        "--sync",
        action="store_true",
        help="fsync the core before publishing it (durable across a crash; slower)",
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
    mode = SnapshotMode(args.snapshot)
    if args.verbose:
        from snapd import kernel  # only -v asks: a plain dump starts without its probes

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
            info = write_core(
                pid,
                path,
                content=spec,
                snapshot=mode,
                progress=meter,
                sync=args.sync,
                budget=args.staging_budget,
            )
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
        print(f"snapd gcore: {path} dumped ({_freeze(info)})")
        if args.verbose:
            for line in verbose_lines(info):
                print(f"snapd gcore: {line}")
    return 1 if failed else 0


def _freeze(info: CoreInfo) -> str:
    """The time the target's threads were halted, as the target saw it (any snapshot mode)."""
    return f"frozen {info.freeze_seconds * 1e3:.0f} ms"


def _rate(bps: float) -> str:
    return f"{bps / 1e9:.2f} GB/s" if bps >= 1e9 else f"{bps / 1e6:.0f} MB/s"


def verbose_lines(info: CoreInfo) -> list[str]:
    """`-v`: the copy strategy, the measurements that chose it, and what the copy did."""
    c = info.copy
    if c is None:
        return []
    mib = 1 << 20
    mode = f"{info.snapshot} (fell back: {info.fallback})" if info.fallback else info.snapshot
    lines = [
        f"pid {info.pid}: snapshot: {mode}; copy: {c.why}; {info.memory_bytes / mib:,.0f} MiB copied, "
        f"staging {c.staging_used / mib:,.0f} MiB used of {c.staging_bytes / mib:,.0f} "
        f"({c.staging_head / mib:,.0f} before the halt, in {c.head_seconds * 1e3:.0f} ms; "
        f"estimate {c.estimate_bytes / mib:,.0f} MiB, "
        f"budget {c.budget_bytes / mib:,.0f} MiB)"
    ]
    if c.rates:
        names = {"memory": "memory", "populate": "fresh memory", "direct": "O_DIRECT", "buffered": "buffered"}
        names.update({"split": "O_DIRECT+buffered", "mmap": "mmap"})
        rates = ", ".join(f"{names.get(k, k)} {_rate(v)}" for k, v in c.rates.items() if v)
        lines.append(f"pid {info.pid}: measured: {rates} ({c.calibration})")
    else:
        lines.append(f"pid {info.pid}: measured: nothing ({c.calibration})")
    written = ", ".join(f"{k} {v / mib:,.0f} MiB" for k, v in c.written.items() if v)
    observed = _rate(c.observed_rate) if c.observed_rate else "-"
    lines.append(
        f"pid {info.pid}: read {c.read_seconds * 1e3:.0f} ms (of which waiting for writers "
        f"{c.waited_seconds * 1e3:.0f} ms); writers {observed} (predicted {_rate(c.predicted_rate)}; "
        f"{_rate(c.beside_rate) if c.beside_rate else '-'} beside the reader), "
        f"{c.drain_seconds * 1e3:.0f} ms after the resume; {written or 'nothing written'}"
    )
    if c.stale:
        lines.append(f"pid {info.pid}: measurements stale ({c.stale}): measured again next time")
    return lines
