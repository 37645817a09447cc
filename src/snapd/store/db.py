"""The catalog's SQLite database: opening it safely, WAL, transactions, corruption.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed entry survives a crash or power
loss, and a transaction cut short by SIGKILL is rolled back at the next open
(sqlite.org/wal.html). Every SQLite error becomes :class:`StoreError` at this boundary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator

from snapd.store import fsutil, migrations
from snapd.store.errors import StoreError, UnsafePath

log = logging.getLogger("snapd.store")

DB_NAME = "catalog.db"
SCHEMA_VERSION = 1

SCHEMA = """
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


class Database:
    """``catalog.db`` in the state directory ``state_fd`` (``state_dir`` names it in messages).

    A file that is not a sound database is moved aside (``reset_to`` says where) and a new one
    started: a damaged catalog must not keep the daemon from taking cores at 2 a.m. All use is
    under :attr:`lock`, from any thread.
    """

    def __init__(self, state_fd: int, state_dir: str) -> None:
        self._state_fd = state_fd
        self.path = os.path.join(state_dir, DB_NAME)
        self.state_dir = state_dir
        self.lock = threading.RLock()
        self.reset_to = ""
        self._db: sqlite3.Connection | None = self._open()

    def _check_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            st = fsutil.lstat_at(self._state_fd, DB_NAME + suffix)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise UnsafePath(
                    self.path + suffix,
                    "is not a regular file (a symlink?); the store refuses it",
                )
            if st is not None and st.st_uid != os.geteuid():
                raise UnsafePath(self.path + suffix, f"owned by uid {st.st_uid}, not by us")

    def _connect(self) -> sqlite3.Connection:
        self._check_files()
        try:
            fd = os.open(
                DB_NAME,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self._state_fd,
            )
            os.fchmod(fd, 0o600)  # SQLite gives -wal and -shm the database file's mode
            os.close(fd)
        except OSError as err:
            raise StoreError(f"{self.path}: cannot create the catalog: {err.strerror}") from err
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 30000")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode})")
            db.execute("PRAGMA synchronous = FULL")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            migrations.apply(db)  # the tables beside ``cores`` (snapd.store.migrations)
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as err:
            aside = f"{DB_NAME}.corrupt.{int(time.time())}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(
                        DB_NAME + suffix,
                        aside + suffix,
                        src_dir_fd=self._state_fd,
                        dst_dir_fd=self._state_fd,
                    )
            self.reset_to = os.path.join(self.state_dir, aside)
            log.error("%s is corrupt (%s); moved it to %s and started a new catalog", self.path, err, aside)
            return self._connect()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: a write transaction, rolled back on any error."""
        with self.lock:
            db = self._conn()
            # Every SQLite error is a StoreError here, at the boundary: "database or disk is full"
            # (the cores' file system filled up) must fail one entry, never the daemon.
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (SQLITE_FULL) leaves the transaction open: end it too.
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {err}") from err

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads outside a transaction."""
        with self.lock:
            try:
                yield self._conn()
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {err}") from err

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the catalog is closed")
        return self._db

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ``["ok"]`` when the database is sound."""
        with self.reading() as db:
            return [str(r[0]) for r in db.execute("PRAGMA integrity_check")]

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None
