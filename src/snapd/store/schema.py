"""The catalog's tables, as named schema steps.

Each step is applied once, in order, and recorded in ``schema_steps`` (snapd.store.db). A part
of snapd that keeps data of its own adds a step creating its own table rather than columns in
``cores``: steps from separate branches compose (they are merged as lines of :data:`STEPS`, no
version number to agree on), and an older snapd opening a newer catalog reads ``cores`` as
before and ignores the tables it does not know. Every statement is idempotent (``IF NOT
EXISTS``), so a catalog made before the step table existed takes the steps unharmed.
"""

from __future__ import annotations

STEPS_TABLE = "schema_steps"

CORES = """
CREATE TABLE IF NOT EXISTS cores (
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
);
CREATE INDEX IF NOT EXISTS cores_rule ON cores(rule, created);
CREATE INDEX IF NOT EXISTS cores_pid ON cores(pid, created);
CREATE INDEX IF NOT EXISTS cores_created ON cores(created);
"""

#: What happens to a core after it is published (snapd.store.shipping): the binaries kept for
#: it, compression at rest, its upload. One row per entry that has such work, deleted with it.
SHIPPING = """
CREATE TABLE IF NOT EXISTS shipping (
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
);
CREATE INDEX IF NOT EXISTS shipping_stage ON shipping(stage);
"""

STEPS: tuple[tuple[str, str], ...] = (
    ("cores", CORES),
    ("shipping", SHIPPING),
)
