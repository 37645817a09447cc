"""Retention's decision, as a pure function: which entries to delete, from the entries, the
limits and the file system's numbers (systemd keeps coredump-vacuum.c apart for the same reason:
the policy is tested without a disk to fill).

Oldest first, in four passes: entries older than ``MaxAge``; failed entries beyond the newest
:data:`MAX_FAILED_ROWS`; per rule, cores beyond ``MaxCores`` or ``MaxUse``; then cores until all
of them fit ``MaxUse`` and the file system has ``KeepFree`` left. An entry still being written
(pending) is never chosen (its size is not even known yet), nor one in ``spare`` (the core just
published, as coredump_vacuum() spares the file it just wrote).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

from snapd.store.entry import Entry
from snapd.store.retention import Retention

MAX_FAILED_ROWS = 1000  # failed (and remote) entries have no file; keep only the newest ones


@dataclass(frozen=True)
class Space:
    """The file system holding the cores (statvfs(3))."""

    size: int  # bytes: f_blocks * f_frsize
    free: int  # bytes available to us: f_bavail * f_frsize


def plan(
    entries: Sequence[Entry],
    retention: Retention,
    space: Space,
    now: float,
    spare: Collection[int] = (),
) -> list[Entry]:
    """The entries to delete, oldest first. ``entries`` in catalog order (oldest first)."""
    pool = [e for e in entries if not e.pending]
    doomed: dict[int, Entry] = {}

    def candidates(group: Iterable[Entry]) -> Iterator[Entry]:
        return (e for e in group if e.id not in spare and e.id not in doomed)

    if retention.max_age is not None:
        for e in candidates(pool):
            if e.created < now - retention.max_age:
                doomed[e.id] = e
    failed = [e for e in pool if not e.complete]
    for e in list(candidates(failed))[: max(0, len(failed) - MAX_FAILED_ROWS)]:
        doomed[e.id] = e
    by_rule: dict[str, list[Entry]] = {}
    for e in pool:
        if e.complete:
            by_rule.setdefault(e.rule, []).append(e)
    for rule, cores in by_rule.items():
        lim = retention.rule_limit(rule)
        live = [e for e in cores if e.id not in doomed]
        count = len(live)
        used = sum(e.disk_bytes for e in live)
        for e in candidates(live):
            over_count = lim.max_cores is not None and count > lim.max_cores
            over_use = lim.max_use is not None and used > lim.max_use
            if not (over_count or over_use):
                break
            doomed[e.id] = e
            count -= 1
            used -= e.disk_bytes
    max_use = retention.max_use.resolve(space.size) if retention.max_use is not None else None
    keep_free = retention.keep_free.resolve(space.size) if retention.keep_free is not None else None
    live = [e for e in pool if e.complete and e.id not in doomed]
    used = sum(e.disk_bytes for e in live)
    free = space.free + sum(e.disk_bytes for e in doomed.values() if e.complete)
    for e in candidates(live):
        if (max_use is None or used <= max_use) and (keep_free is None or free >= keep_free):
            break
        doomed[e.id] = e
        used -= e.disk_bytes
        free += e.disk_bytes
    return sorted(doomed.values(), key=lambda e: (e.created, e.id))
