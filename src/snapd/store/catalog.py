"""The catalog: one SQLite database (``catalog.db``) and the core files beside it (``cores/``).

Life of an entry: :meth:`Catalog.reserve` records it as ``pending`` and chooses the final path
*before* the dump, so that a daemon killed mid-dump leaves a row that the next start-up marks
failed; the core writer then writes ``cores/.snapd-partial.*`` and links it to that path;
:meth:`Catalog.publish` checks the file (regular, ours, one link) and marks the entry
``complete``, or :meth:`Catalog.fail` records why it is not. Only complete and failed entries are
listed; retention (:mod:`snapd.store.retention`) never touches a pending one.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed entry survives a crash or power
loss, and a transaction cut short by SIGKILL is rolled back at the next open (sqlite.org/wal.html).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from snapd.atomicfile import PARTIAL_PREFIX
from snapd.core.info import CoreInfo
from snapd.store import fsutil
from snapd.store.errors import CoreBusy, NoSuchCore, StoreError, UnsafePath
from snapd.store.retention import Retention
from snapd.template import DEFAULT_TEMPLATE, NameFields, expand, validate_template

log = logging.getLogger("snapd.store")

DB_NAME = "catalog.db"
CORES_DIR = "cores"

PENDING = "pending"
COMPLETE = "complete"
FAILED = "failed"

SCHEMA_VERSION = 1
MAX_FAILED_ROWS = 1000  # failed entries have no file; keep only the newest ones
_MAX_WHY = 500

_SCHEMA = """
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

_LIST_COLUMNS = (
    "id, name, rule, pid, comm, exe, cmdline, uid, cgroup, unit, time, created, trigger, content, "
    "snapshot, size, disk_bytes, threads, freeze_seconds, dump_seconds, status"
)


def iso_utc(when: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``: ``2026-11-27T01:02:03.456Z``."""
    d = _dt.datetime.fromtimestamp(when, _dt.timezone.utc)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(s: object) -> str:
    # Target-controlled strings may carry surrogate escapes; SQLite wants valid UTF-8.
    return str(s).encode("utf-8", "backslashreplace").decode("utf-8")


def _one_line(s: str, limit: int = _MAX_WHY) -> str:
    return " ".join(_text(s).split())[:limit]


@dataclass(frozen=True)
class Entry:
    """One catalog entry, as list-cores and info show it."""

    id: int
    name: str
    path: str
    rule: str
    pid: int
    comm: str
    exe: str
    cmdline: list[str]
    uid: int
    cgroup: str
    unit: str
    time: str  # UTC, ISO 8601
    created: float  # unix time
    trigger: dict[str, Any]
    content: str
    snapshot: str
    size: int  # apparent size in bytes
    disk_bytes: int  # allocated on disk
    threads: int
    freeze_seconds: float
    dump_seconds: float
    status: str  # "pending" | "complete" | "failed: why"
    context: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def to_dict(self, *, context: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not context:
            d.pop("context")
            d.pop("info")
        return d


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


class Catalog:
    """The embedded catalog in ``state_dir`` (created 0700 if missing).

    With ``recover`` (the daemon's way), the state dir is locked for as long as the catalog is
    open and start-up recovery runs; ``recover=False`` opens it alongside a running daemon,
    e.g. to read it, and must not be used to take cores.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        retention: Retention | None = None,
        *,
        recover: bool = True,
    ) -> None:
        self.state_dir = os.path.abspath(os.fspath(state_dir))
        self.cores_dir = os.path.join(self.state_dir, CORES_DIR)
        self.db_path = os.path.join(self.state_dir, DB_NAME)
        self.retention = retention if retention is not None else Retention()
        self._lock = threading.RLock()
        self._state_fd = fsutil.open_dir(self.state_dir, 0o700)
        try:
            if recover:
                self._lock_state_dir()
            self._cores_fd = fsutil.open_dir(
                CORES_DIR, 0o700, at=self._state_fd, label=self.cores_dir
            )
            # The cores directory is ours alone: 0700 whatever umask or hand made it.
            os.fchmod(self._cores_fd, 0o700)
            self.recovery = RecoveryReport()
            self._db = self._open_db()
        except BaseException:
            self._close_fds()
            raise
        if recover:
            self.recover()

    # -- opening ------------------------------------------------------------------------------

    def _lock_state_dir(self) -> None:
        # Recovery deletes partial files and fails pending entries: only the one owner of the
        # state dir may do that, never while another process is dumping into it. flock(2) on
        # the directory fd is held as long as the catalog is open and dropped if we die.
        try:
            fcntl.flock(self._state_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise StoreError(
                f"{self.state_dir}: in use by another snapd daemon; "
                "stop it, or open the catalog with recover=False to only read"
            ) from err

    def _check_db_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            st = fsutil.lstat_at(self._state_fd, DB_NAME + suffix)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise UnsafePath(
                    self.db_path + suffix,
                    "is not a regular file (a symlink?); the store refuses it",
                )
            if st is not None and st.st_uid != os.geteuid():
                raise UnsafePath(self.db_path + suffix, f"owned by uid {st.st_uid}, not by us")

    def _connect(self) -> sqlite3.Connection:
        self._check_db_files()
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
            raise StoreError(f"{self.db_path}: cannot create the catalog: {err.strerror}") from err
        db = sqlite3.connect(
            self.db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 30000")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.db_path}: SQLite refused WAL mode (got {mode})")
            db.execute("PRAGMA synchronous = FULL")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _open_db(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as err:
            # A catalog that is not a database any more must not keep the daemon from taking
            # cores at 2 a.m.: move it aside for a human, start afresh, report it.
            aside = f"{DB_NAME}.corrupt.{int(time.time())}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(
                        DB_NAME + suffix,
                        aside + suffix,
                        src_dir_fd=self._state_fd,
                        dst_dir_fd=self._state_fd,
                    )
            self.recovery.db_reset = os.path.join(self.state_dir, aside)
            log.error(
                "%s is corrupt (%s); moved it to %s and started a new catalog",
                self.db_path,
                err,
                aside,
            )
            return self._connect()

    def _close_fds(self) -> None:
        for attr in ("_cores_fd", "_state_fd"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def close(self) -> None:
        with self._lock:
            db = getattr(self, "_db", None)
            if db is not None:
                db.close()
                self._db = None  # type: ignore[assignment]
            self._close_fds()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise StoreError("the catalog is closed")
            # SQLite errors become StoreError here, at the boundary: "database or disk is full"
            # (the cores' file system filled up) used to escape as sqlite3.OperationalError,
            # which no caller expects, and killed the daemon from Catalog.reserve.
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (SQLITE_FULL) leaves the transaction open: end it too.
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise StoreError(f"{self.db_path}: {err}") from err

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ``["ok"]`` when the database is sound."""
        with self._lock:
            return [str(r[0]) for r in self._db.execute("PRAGMA integrity_check")]

    # -- rows ---------------------------------------------------------------------------------

    def _entry(self, row: sqlite3.Row) -> Entry:
        keys = row.keys()
        return Entry(
            id=row["id"],
            name=row["name"],
            path=os.path.join(self.cores_dir, row["name"]),
            rule=row["rule"],
            pid=row["pid"],
            comm=row["comm"],
            exe=row["exe"],
            cmdline=json.loads(row["cmdline"]),
            uid=row["uid"],
            cgroup=row["cgroup"],
            unit=row["unit"],
            time=row["time"],
            created=row["created"],
            trigger=json.loads(row["trigger"]),
            content=row["content"],
            snapshot=row["snapshot"],
            size=row["size"],
            disk_bytes=row["disk_bytes"],
            threads=row["threads"],
            freeze_seconds=row["freeze_seconds"],
            dump_seconds=row["dump_seconds"],
            status=row["status"],
            context=json.loads(row["context"]) if "context" in keys else {},
            info=json.loads(row["info"]) if "info" in keys else {},
        )

    def _row(self, db: sqlite3.Connection, core_id: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM cores WHERE id = ?", (int(core_id),)).fetchone()
        if row is None:
            raise NoSuchCore(core_id)
        return row  # type: ignore[no-any-return]

    def path_of(self, name: str) -> str:
        return os.path.join(self.cores_dir, fsutil.check_name(name))

    # -- the life of an entry -----------------------------------------------------------------

    def reserve(
        self,
        *,
        rule: str,
        pid: int,
        trigger: Mapping[str, Any] | None = None,
        comm: str | None = None,
        exe: str | None = None,
        cmdline: Sequence[str] | None = None,
        uid: int | None = None,
        cgroup: str | None = None,
        unit: str | None = None,
        content: str = "default",
        snapshot: str = "frozen",
        template: str = DEFAULT_TEMPLATE,
        context: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> Entry:
        """Record a pending entry and choose its final path (``entry.path``) for the writer.

        Identity fields left ``None`` are taken from ``context`` (see
        :func:`snapd.procfs.context.capture`), which is stored whole in the entry.
        """
        validate_template(template)
        # Retention before the dump as well as after it (systemd-coredump vacuums on both sides):
        # otherwise a core that filled the disk past the limits stays until the next *published*
        # core, which cannot be written for want of room: every later core failed with ENOSPC.
        try:
            self.vacuum(now=now)
        except (StoreError, OSError) as err:
            log.warning("retention before a dump failed: %s", err)
        when = time.time() if now is None else now
        ctx = dict(context or {})

        def pick(value: Any, key: str, default: Any) -> Any:
            return value if value is not None else ctx.get(key, default)

        comm_v = _text(pick(comm, "comm", ""))
        values = (
            _text(rule),
            int(pid),
            comm_v,
            _text(pick(exe, "exe", "")),
            json.dumps([_text(a) for a in pick(cmdline, "cmdline", [])]),
            int(pick(uid, "uid", -1)),
            _text(pick(cgroup, "cgroup", "")),
            _text(pick(unit, "unit", "")),
            iso_utc(when),
            when,
            json.dumps(dict(trigger or {}), default=str),
            _text(content),
            _text(snapshot),
            PENDING,
            json.dumps(ctx, default=str),
        )
        host = socket.gethostname()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO cores (name, rule, pid, comm, exe, cmdline, uid, cgroup, unit, time, "
                "created, trigger, content, snapshot, status, context) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (f"/reserving/{os.getpid()}/{threading.get_ident()}", *values),
            )
            core_id = int(cur.lastrowid or 0)
            base = expand(
                template,
                NameFields(pid=pid, comm=comm_v, rule=rule, seq=core_id, host=host, when=when),
            )
            name = self._unique_name(db, base)
            db.execute("UPDATE cores SET name = ? WHERE id = ?", (name, core_id))
            row = self._row(db, core_id)
        return self._entry(row)

    def _unique_name(self, db: sqlite3.Connection, base: str) -> str:
        for i in range(10000):
            name = base if i == 0 else f"{base}.{i}"
            if db.execute("SELECT 1 FROM cores WHERE name = ?", (name,)).fetchone():
                continue
            # Anything already there (a symlink, a hard link, a stray file) is left alone:
            # the writer links with replace=False, and we pick a name nobody holds.
            if fsutil.lstat_at(self._cores_fd, name) is not None:
                continue
            return name
        raise StoreError(f"{self.cores_dir}: no free name for {base!r}; clean the directory")

    def publish(self, core_id: int, info: CoreInfo, *, vacuum: bool = True) -> Entry:
        """Mark a pending entry complete with what the writer reported.

        The file at ``entry.path`` must be a regular file owned by us with a single link;
        otherwise the entry is marked failed (and returned, not raised). With ``vacuum``, the
        retention limits are applied afterwards, sparing this new core (like systemd-coredump).
        """
        with self._tx() as db:
            row = self._row(db, core_id)
            if row["status"] != PENDING:
                raise StoreError(
                    f"core {core_id} is {row['status']!r}, not pending; cannot publish it"
                )
            name = row["name"]
            why = ""
            if os.path.normpath(info.path) != self.path_of(name):
                why = f"the writer reported {info.path!r}, not the reserved {self.path_of(name)!r}"
            st: os.stat_result | None = None
            if not why:
                try:
                    fd = os.open(
                        name,
                        os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                        dir_fd=self._cores_fd,
                    )
                except OSError as err:
                    what = "a symlink" if err.errno == errno.ELOOP else err.strerror
                    why = f"core file unusable: {what}"
                else:
                    try:
                        st = os.fstat(fd)
                        if fsutil.is_own_regular(st) and stat.S_IMODE(st.st_mode) != 0o600:
                            os.fchmod(fd, 0o600)
                    finally:
                        os.close(fd)
                    if not fsutil.is_own_regular(st):
                        why = "core file is not a regular file of ours with a single link"
            if why or st is None:
                db.execute(
                    "UPDATE cores SET status = ? WHERE id = ?",
                    (f"{FAILED}: {_one_line(why)}", core_id),
                )
                log.warning("core %d (%s): %s", core_id, name, why)
            else:
                db.execute(
                    "UPDATE cores SET status = ?, size = ?, disk_bytes = ?, threads = ?, "
                    "freeze_seconds = ?, dump_seconds = ?, content = ?, snapshot = ?, info = ?, "
                    "comm = CASE WHEN comm = '' THEN ? ELSE comm END, "
                    "exe = CASE WHEN exe = '' THEN ? ELSE exe END WHERE id = ?",
                    (
                        COMPLETE,
                        st.st_size,
                        st.st_blocks * 512,
                        info.threads,
                        info.freeze_seconds,
                        info.elapsed_seconds,
                        _text(info.content),
                        _text(info.snapshot),
                        json.dumps(info.to_dict(), default=str),
                        _text(info.comm),
                        _text(info.exe),
                        core_id,
                    ),
                )
            entry = self._entry(self._row(db, core_id))
        if vacuum and entry.complete:
            self.vacuum(exclude=(core_id,))
        return entry

    def fail(self, core_id: int, why: str) -> Entry:
        """Mark a pending entry failed; remove its file if the writer had already linked it."""
        with self._tx() as db:
            row = self._row(db, core_id)
            if row["status"] != PENDING:
                raise StoreError(
                    f"core {core_id} is {row['status']!r}, not pending; cannot fail it"
                )
            self._drop_file(row["name"], only_ours=True)
            db.execute(
                "UPDATE cores SET status = ?, size = 0, disk_bytes = 0 WHERE id = ?",
                (f"{FAILED}: {_one_line(why) or 'unknown error'}", core_id),
            )
            return self._entry(self._row(db, core_id))

    def _drop_file(self, name: str, *, only_ours: bool) -> bool:
        st = fsutil.lstat_at(self._cores_fd, name)
        if st is None:
            return False
        if only_ours and not fsutil.is_own_regular(st):
            # Not what our writer makes (a symlink or hard link planted under our name): leave it
            # for a human rather than guess; it is never listed.
            log.warning("%s: not a regular file of ours; left in place", self.path_of(name))
            return False
        return fsutil.unlink_at(self._cores_fd, name)

    # -- queries ------------------------------------------------------------------------------

    def list(
        self,
        *,
        rule: str | None = None,
        pid: int | None = None,
        since: float | None = None,
        include_pending: bool = False,
        include_failed: bool = True,
        context: bool = False,
    ) -> list[Entry]:
        """Entries oldest first; pending ones (dumps in progress) only if asked, failed ones
        (attempts that left no core) unless told not to."""
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if rule is not None:
            where.append("rule = ?")
            args.append(rule)
        if pid is not None:
            where.append("pid = ?")
            args.append(int(pid))
        if since is not None:
            where.append("created >= ?")
            args.append(float(since))
        if not include_pending:
            where.append("status != ?")
            args.append(PENDING)
        if not include_failed:
            where.append("status NOT LIKE 'failed%'")
        cols = "*" if context else _LIST_COLUMNS
        sql = f"SELECT {cols} FROM cores"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, id"
        with self._lock:
            return [self._entry(r) for r in self._db.execute(sql, args)]

    def get(self, core_id: int) -> Entry:
        with self._lock:
            return self._entry(self._row(self._db, core_id))

    def usage(self) -> int:
        """Bytes on disk used by complete cores."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(disk_bytes), 0) FROM cores WHERE status = ?", (COMPLETE,)
            ).fetchone()
            return int(row[0])

    def remove(self, core_id: int) -> Entry:
        """Delete a core file and its entry (file first: a crash in between leaves a row whose
        file is missing, which recovery reports, never an unlisted file)."""
        with self._tx() as db:
            entry = self._entry(self._row(db, core_id))
            if entry.pending:
                raise CoreBusy(core_id, "remove")
            self._drop_file(entry.name, only_ours=False)
            db.execute("DELETE FROM cores WHERE id = ?", (core_id,))
        return entry

    # -- start-up recovery --------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Remove the writer's partial files, fail pending entries (deleting their files),
        and report complete entries whose file vanished and files no entry names."""
        rep = self.recovery
        with self._tx() as db:
            for name in self._scan():
                if name.startswith(PARTIAL_PREFIX) and fsutil.unlink_at(self._cores_fd, name):
                    rep.partial_removed.append(name)
            for row in db.execute(
                "SELECT id, name FROM cores WHERE status = ?", (PENDING,)
            ).fetchall():
                self._drop_file(row["name"], only_ours=True)
                db.execute(
                    "UPDATE cores SET status = ? WHERE id = ?",
                    (f"{FAILED}: the daemon stopped during the dump", row["id"]),
                )
                rep.pending_failed.append(int(row["id"]))
            names = {
                r["name"]: int(r["id"])
                for r in db.execute("SELECT id, name FROM cores WHERE status = ?", (COMPLETE,))
            }
            present = set(self._scan())
            for name, core_id in names.items():
                if name not in present:
                    db.execute(
                        "UPDATE cores SET status = ?, size = 0, disk_bytes = 0 WHERE id = ?",
                        # Not only by hand: retention and remove() unlink the file before
                        # their transaction commits, so a daemon killed in between leaves this.
                        (
                            f"{FAILED}: core file missing (removed by hand, or by retention "
                            "or ctl rm as the daemon stopped)",
                            core_id,
                        ),
                    )
                    rep.missing.append(core_id)
            known = {r[0] for r in db.execute("SELECT name FROM cores")}
            rep.orphans.extend(
                sorted(n for n in present if n not in known and not n.startswith(PARTIAL_PREFIX))
            )
        if rep:
            log.warning(
                "catalog recovery: removed %d partial file(s), failed %d interrupted dump(s), "
                "%d core file(s) missing",
                len(rep.partial_removed),
                len(rep.pending_failed),
                len(rep.missing),
            )
        return rep

    def _scan(self) -> builtins.list[str]:
        with os.scandir(self._cores_fd) as it:
            return [e.name for e in it]

    # -- retention ----------------------------------------------------------------------------

    def vacuum(
        self, *, exclude: Iterable[int] = (), now: float | None = None
    ) -> builtins.list[Entry]:
        """Apply the retention limits, oldest first; pending entries and ``exclude`` are spared.
        Returns the removed entries."""
        ret = self.retention
        now = time.time() if now is None else now
        spare = set(exclude)
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_LIST_COLUMNS} FROM cores WHERE status != ? ORDER BY created, id",
                (PENDING,),
            ).fetchall()
            entries = [self._entry(r) for r in rows]
            doomed: dict[int, Entry] = {}

            def candidates(pool: Iterable[Entry]) -> Iterator[Entry]:
                return (e for e in pool if e.id not in spare and e.id not in doomed)

            if ret.max_age is not None:
                for e in candidates(entries):
                    if e.created < now - ret.max_age:
                        doomed[e.id] = e
            failed = [e for e in entries if not e.complete]
            for e in list(candidates(failed))[: max(0, len(failed) - MAX_FAILED_ROWS)]:
                doomed[e.id] = e
            by_rule: dict[str, builtins.list[Entry]] = {}
            for e in entries:
                if e.complete:
                    by_rule.setdefault(e.rule, []).append(e)
            for rule, pool in by_rule.items():
                lim = ret.rule_limit(rule)
                live = [e for e in pool if e.id not in doomed]
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
            vfs = os.fstatvfs(self._cores_fd)
            fs_size = vfs.f_blocks * vfs.f_frsize
            free = vfs.f_bavail * vfs.f_frsize
            max_use = ret.max_use.resolve(fs_size) if ret.max_use is not None else None
            keep_free = ret.keep_free.resolve(fs_size) if ret.keep_free is not None else None
            live = [e for e in entries if e.complete and e.id not in doomed]
            used = sum(e.disk_bytes for e in live)
            free += sum(e.disk_bytes for e in doomed.values() if e.complete)
            for e in candidates(live):
                if (max_use is None or used <= max_use) and (
                    keep_free is None or free >= keep_free
                ):
                    break
                doomed[e.id] = e
                used -= e.disk_bytes
                free += e.disk_bytes
            for e in doomed.values():
                if e.complete:
                    self._drop_file(e.name, only_ours=False)
                db.execute("DELETE FROM cores WHERE id = ? AND status != ?", (e.id, PENDING))
        for e in doomed.values():
            if e.complete:
                log.info(
                    "retention: removed core %d (%s, %d bytes on disk)", e.id, e.name, e.disk_bytes
                )
        return sorted(doomed.values(), key=lambda e: (e.created, e.id))
