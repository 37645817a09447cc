"""Named schema migrations of the catalog, applied once each, in order, at open.

The ``cores`` table is :data:`snapd.store.db.SCHEMA`. Whatever is added beside it (a table of
its own, a column) is a :class:`Migration` with a name: a database records the names it has
applied in ``migrations``, so migrations written on different branches compose (no version
number to collide on), and each runs at most once, in one transaction with its record. A
migration only adds: a daemon of an older snapd opening the catalog still finds its own tables
as it left them (``CREATE TABLE IF NOT EXISTS``, SQLite ignores tables it does not know).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    name: str  # unique, never reused: "reports-1"
    statements: tuple[str, ...]  # one SQL statement each (no executescript: it COMMITs)


#: The morning report (issue 11) and the series it belongs to (issue 12): one row per published
#: core. ``status`` is ``queued``, ``running``, ``complete`` or ``failed: why``; the three times
#: are unix time (``time.time()``): queued when the core was published, started and ended by the
#: report worker's run (never while the target is halted: after ``info.started +
#: info.freeze_seconds``). ``firing`` is the id of the first core of the firing this core belongs
#: to (a ``repeat: N`` series shares it). ``where_`` is the list-cores WHERE column
#: (``snapd.report.where``), ``report`` the report's JSON, ``request`` what it was computed from
#: (firing thread, the event's registers and stack), so that an interrupted report can be run
#: again after a restart. The trigger keeps a row from outliving its core.
REPORTS = Migration(
    "reports-1",
    (
        """CREATE TABLE IF NOT EXISTS reports (
            core_id  INTEGER PRIMARY KEY,
            firing   INTEGER NOT NULL,
            status   TEXT NOT NULL,
            queued   REAL NOT NULL,
            started  REAL,
            ended    REAL,
            where_   TEXT NOT NULL DEFAULT '',
            request  TEXT NOT NULL DEFAULT '{}',
            report   TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS reports_firing ON reports(firing)",
        "CREATE INDEX IF NOT EXISTS reports_status ON reports(status)",
        """CREATE TRIGGER IF NOT EXISTS reports_follow_cores AFTER DELETE ON cores
           BEGIN DELETE FROM reports WHERE core_id = OLD.id; END""",
    ),
)

#: In the order they are applied. Add yours at the end, under a new name.
MIGRATIONS: tuple[Migration, ...] = (REPORTS,)

_LEDGER = "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)"


def apply(db: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Apply the migrations ``db`` has not recorded yet; return their names. ``db`` is in
    autocommit mode (``isolation_level=None``); each migration is one ``BEGIN IMMEDIATE``
    transaction with its ledger row, so a crash leaves it wholly applied or not at all."""
    db.execute(_LEDGER)
    done = {str(r[0]) for r in db.execute("SELECT name FROM migrations")}
    applied = []
    for m in migrations:
        if m.name in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in m.statements:
                db.execute(stmt)
            db.execute("INSERT INTO migrations (name, applied) VALUES (?, ?)", (m.name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        applied.append(m.name)
    return applied
