"""Named schema migrations of the catalog, applied once each, in order, at open.

Every table is a :class:`Migration` with a name, ``cores`` first: a database records the names
it has applied in ``migrations``, so migrations written on different branches compose (no
version number to collide on), and each runs at most once, in one transaction with its record.
A part of snapd that keeps data of its own adds a migration creating its own table rather than
columns in ``cores``. A migration only adds: a daemon of an older snapd opening the catalog
still finds its own tables as it left them; every statement is idempotent (``IF NOT EXISTS``),
so a catalog made before the ledger existed takes the migrations unharmed.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    name: str  # unique, never reused: "reports-1"
    statements: tuple[str, ...]  # one SQL statement each (no executescript: it COMMITs)


#: The catalog of cores: one row per core, from its reservation (``pending``) to ``complete`` or
#: ``failed: why`` (snapd.store.entry).
CORES = Migration(
    "cores-1",
    (
        """CREATE TABLE IF NOT EXISTS cores (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL UNIQUE,
    rule            TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    comm            TEXT NOT NULL DEFAULT '',
    exe             TEXT NOT NULL DEFAULT '',
    cmdline         TEXT NOT NULL DEFAULT '[]',
    uid             INTEGER NOT NULL DEFAULT -1,
    cgroup          TEXT NOT NULL DEFAULT '',
    unit            TEXT NOT NULL DEFAULT '',
    time            TEXT NOT NULL,
    created         REAL NOT NULL,
    trigger         TEXT NOT NULL DEFAULT '{}',
    content         TEXT NOT NULL DEFAULT '',
    snapshot        TEXT NOT NULL DEFAULT '',
    size            INTEGER NOT NULL DEFAULT 0,
    disk_bytes      INTEGER NOT NULL DEFAULT 0,
    threads         INTEGER NOT NULL DEFAULT 0,
    freeze_seconds  REAL NOT NULL DEFAULT 0,
    dump_seconds    REAL NOT NULL DEFAULT 0,
    status          TEXT NOT NULL,
    context         TEXT NOT NULL DEFAULT '{}',
    info            TEXT NOT NULL DEFAULT '{}'
)""",
        """CREATE INDEX IF NOT EXISTS cores_rule ON cores(rule, created)""",
        """CREATE INDEX IF NOT EXISTS cores_pid ON cores(pid, created)""",
        """CREATE INDEX IF NOT EXISTS cores_created ON cores(created)""",
    ),
)

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

#: What happens to a core after it is published (snapd.store.shipping): the binaries kept for
#: it, compression at rest, its upload. One row per entry that has such work, deleted with it.
SHIPPING = Migration(
    "shipping-1",
    (
        """CREATE TABLE IF NOT EXISTS shipping (
    core_id          INTEGER PRIMARY KEY,          -- cores.id
    stage            TEXT NOT NULL,                -- capture | store | upload | done
    build_ids        TEXT NOT NULL DEFAULT '[]',   -- ELF files kept for it in elfcache/ (JSON)
    exe_build_id     TEXT NOT NULL DEFAULT '',
    compression      TEXT NOT NULL DEFAULT '',     -- 'zstd' once stored compressed
    data_bytes       INTEGER NOT NULL DEFAULT 0,   -- core data that was compressed
    compress_seconds REAL NOT NULL DEFAULT 0,
    upload           TEXT NOT NULL DEFAULT '',     -- '' | queued | uploaded | failed: why
    upload_key       TEXT NOT NULL DEFAULT '',
    upload_state     TEXT,                         -- the uploader's resumable state (JSON)
    bundle           TEXT NOT NULL DEFAULT '',     -- its bundle in outbox/ while queued
    bundle_bytes     INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT NOT NULL DEFAULT '',
    uploaded_at      REAL
)""",
        """CREATE INDEX IF NOT EXISTS shipping_stage ON shipping(stage)""",
    ),
)

#: In the order they are applied. Add yours at the end, under a new name.
MIGRATIONS: tuple[Migration, ...] = (CORES, REPORTS, SHIPPING)

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
