"""Start-up recovery: what a daemon killed at any instant leaves, made consistent again.

A killed writer leaves ``PARTIAL_PREFIX`` temp files: removed. A killed daemon leaves pending
entries: failed, and their files removed (never listed: nothing partial is ever listed).
Retention and ``ctl rm`` unlink a file before their transaction commits, so a kill in between
leaves a complete entry without its file: marked failed and reported. Files no entry names are
reported, never deleted: the store removes only what it knows it made.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field

from snapd.atomicfile import PARTIAL_PREFIX
from snapd.store import fsutil
from snapd.store.entry import COMPLETE, FAILED, PENDING

log = logging.getLogger("snapd.store")


@dataclass
class RecoveryReport:
    """What start-up recovery found and did."""

    partial_removed: list[str] = field(default_factory=list)
    pending_failed: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    db_reset: str = ""  # where a corrupt catalog.db was moved, if it was

    def __bool__(self) -> bool:
        return bool(self.partial_removed or self.pending_failed or self.missing or self.db_reset)


def _scan(cores_fd: int) -> list[str]:
    with os.scandir(cores_fd) as it:
        return [e.name for e in it]


def recover(db: sqlite3.Connection, cores_fd: int, cores_dir: str, rep: RecoveryReport) -> None:
    """Run recovery inside the caller's transaction ``db``, recording into ``rep``."""
    for name in _scan(cores_fd):
        if name.startswith(PARTIAL_PREFIX) and fsutil.unlink_at(cores_fd, name):
            rep.partial_removed.append(name)
    for row in db.execute("SELECT id, name FROM cores WHERE status = ?", (PENDING,)).fetchall():
        fsutil.drop_core(cores_fd, cores_dir, row["name"], only_ours=True)
        db.execute(
            "UPDATE cores SET status = ? WHERE id = ?",
            (f"{FAILED}: the daemon stopped during the dump", row["id"]),
        )
        rep.pending_failed.append(int(row["id"]))
    complete = db.execute("SELECT id, name FROM cores WHERE status = ?", (COMPLETE,))
    names = {r["name"]: int(r["id"]) for r in complete}
    present = set(_scan(cores_fd))
    for name, core_id in names.items():
        if name not in present:
            db.execute(
                "UPDATE cores SET status = ?, size = 0, disk_bytes = 0 WHERE id = ?",
                (
                    f"{FAILED}: core file missing (removed by hand, or by retention "
                    "or ctl rm as the daemon stopped)",
                    core_id,
                ),
            )
            rep.missing.append(core_id)
    known = {r[0] for r in db.execute("SELECT name FROM cores")}
    rep.orphans.extend(sorted(n for n in present if n not in known and not n.startswith(PARTIAL_PREFIX)))
    if rep:
        log.warning(
            "catalog recovery: removed %d partial file(s), failed %d interrupted dump(s), "
            "%d core file(s) missing",
            len(rep.partial_removed),
            len(rep.pending_failed),
            len(rep.missing),
        )
