"""The catalog: one SQLite database (``catalog.db``) and the core files beside it (``cores/``).

Life of an entry: :meth:`Catalog.reserve` records it as ``pending`` and chooses the final path
*before* the dump, so that a daemon killed mid-dump leaves a row that the next start-up marks
failed (:mod:`snapd.store.recovery`); the core writer then writes ``cores/.snapd-partial.*`` and
links it to that path; :meth:`Catalog.publish` checks the file (regular, ours, one link) and
marks the entry ``complete``, or :meth:`Catalog.fail` records why it is not. Only complete and
failed entries are listed; retention (:mod:`snapd.store.vacuum`) never touches a pending one.
The database itself (WAL, transactions, corruption) is :mod:`snapd.store.db`.
"""

from __future__ import annotations

import builtins
import dataclasses
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from snapd.core.info import CoreInfo
from snapd.store import fsutil, vacuum
from snapd.store.db import DB_NAME, Database
from snapd.store.entry import COMPLETE, FAILED, LIST_COLUMNS, PENDING, Entry, db_text, iso_utc, one_line
from snapd.store.errors import CoreBusy, NoSuchCore, StoreError
from snapd.store.recovery import RecoveryReport, recover
from snapd.store.reports import ReportStore
from snapd.store.retention import Retention
from snapd.store.shipping import ShipLog
from snapd.template import DEFAULT_TEMPLATE, NameFields, expand, validate_template

log = logging.getLogger("snapd.store")

CORES_DIR = "cores"
#: seconds a dump's reservation waits for the blocks retention removed to come back
SETTLE_S = 1.0


class Catalog:
    """The embedded catalog in ``state_dir`` (created 0700 if missing).

    With ``recover`` (the daemon's way), the state dir is locked for as long as the catalog is
    open and start-up recovery runs; ``recover=False`` opens it alongside a running daemon,
    e.g. to read it, and must not be used to take cores.

    ``elf_bytes(build_id)``: the bytes on disk that only the ELF cache holds for that file
    (snapd.ship.elfcache); retention counts them with the newest core that uses it.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        retention: Retention | None = None,
        *,
        recover: bool = True,
        elf_bytes: Callable[[str], int] | None = None,
    ) -> None:
        self.state_dir = os.path.abspath(os.fspath(state_dir))
        self.elf_bytes = elf_bytes
        self.cores_dir = os.path.join(self.state_dir, CORES_DIR)
        self.db_path = os.path.join(self.state_dir, DB_NAME)
        self.retention = retention if retention is not None else Retention()
        #: called with each entry retention removed, after its file is unlinked: whoever still
        #: reads that file (a report worker) should let go of it, since its blocks are freed only
        #: with the last reference (unlink(2)), and the next core may need them now
        self.removed: list[Callable[[Entry], None]] = []
        self._state_fd = fsutil.open_dir(self.state_dir, 0o700)
        try:
            if recover:
                self._lock_state_dir()
            self._cores_fd = fsutil.open_dir(CORES_DIR, 0o700, at=self._state_fd, label=self.cores_dir)
            # The cores directory is ours alone: 0700 whatever umask or hand made it.
            os.fchmod(self._cores_fd, 0o700)
            self._db = Database(self._state_fd, self.state_dir)
            #: the morning reports of the cores (snapd.store.reports)
            self.reports = ReportStore(self._db)
            #: what happens to cores after publication: kept binaries, compression, uploads
            self.shipping = ShipLog(self._db, self._state_fd, self.state_dir, self._cores_fd, self.cores_dir)
            self.recovery = RecoveryReport(db_reset=self._db.reset_to)
        except BaseException:
            self._close_fds()
            raise
        if recover:
            self.recover()

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

    def _close_fds(self) -> None:
        for attr in ("_cores_fd", "_state_fd"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with db.lock:
                db.close()
                if hasattr(self, "shipping"):
                    self.shipping.close()
                self._close_fds()
        else:
            self._close_fds()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ``["ok"]`` when the database is sound."""
        return self._db.integrity_check()

    # -- rows ---------------------------------------------------------------------------------

    def _entry(self, row: sqlite3.Row) -> Entry:
        return Entry.from_row(row, self.cores_dir)

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
        # a core that filled the disk past the limits must not keep the next one from being
        # written, and only a published core would otherwise make room.
        try:
            self.vacuum(now=now, settle=SETTLE_S)
        except (StoreError, OSError) as err:
            log.warning("retention before a dump failed: %s", err)
        when = time.time() if now is None else now
        ctx = dict(context or {})

        def pick(value: Any, key: str, default: Any) -> Any:
            return value if value is not None else ctx.get(key, default)

        comm_v = db_text(pick(comm, "comm", ""))
        values = (
            db_text(rule),
            int(pid),
            comm_v,
            db_text(pick(exe, "exe", "")),
            json.dumps([db_text(a) for a in pick(cmdline, "cmdline", [])]),
            int(pick(uid, "uid", -1)),
            db_text(pick(cgroup, "cgroup", "")),
            db_text(pick(unit, "unit", "")),
            iso_utc(when),
            when,
            json.dumps(dict(trigger or {}), default=str),
            db_text(content),
            db_text(snapshot),
            PENDING,
            json.dumps(ctx, default=str),
        )
        host = socket.gethostname()
        with self._db.tx() as db:
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

    def publish(self, core_id: int, info: CoreInfo, *, vacuum: bool = True, after: str = "") -> Entry:
        """Mark a pending entry complete with what the writer reported.

        The file at ``entry.path`` must be a regular file owned by us with a single link;
        otherwise the entry is marked failed (and returned, not raised). With ``vacuum``, the
        retention limits are applied afterwards, sparing this new core (like systemd-coredump).
        ``after``: the first stage of its work after publication (snapd.store.shipping),
        recorded in the same transaction.
        """
        with self._db.tx() as db:
            row = self._row(db, core_id)
            if row["status"] != PENDING:
                raise StoreError(f"core {core_id} is {row['status']!r}, not pending; cannot publish it")
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
                    (f"{FAILED}: {one_line(why)}", core_id),
                )
                log.warning("core %d (%s): %s", core_id, name, why)
            else:
                argv = json.dumps([db_text(a) for a in info.cmdline])
                db.execute(
                    "UPDATE cores SET status = ?, size = ?, disk_bytes = ?, threads = ?, "
                    "freeze_seconds = ?, dump_seconds = ?, content = ?, snapshot = ?, info = ?, "
                    # The process as the core shows it, where the writer read it while the
                    # target was halted: a command line rewritten since the context was
                    # captured (setproctitle) would make info and the core disagree.
                    "comm = CASE WHEN ? = '' THEN comm ELSE ? END, "
                    "cmdline = CASE WHEN ? = '[]' THEN cmdline ELSE ? END, "
                    "exe = CASE WHEN exe = '' THEN ? ELSE exe END WHERE id = ?",
                    (
                        COMPLETE,
                        st.st_size,
                        st.st_blocks * 512,
                        info.threads,
                        info.freeze_seconds,
                        info.elapsed_seconds,
                        db_text(info.content),
                        db_text(info.snapshot),
                        json.dumps(info.to_dict(), default=str),
                        db_text(info.comm),
                        db_text(info.comm),
                        argv,
                        argv,
                        db_text(info.exe),
                        core_id,
                    ),
                )
                if after:
                    self.shipping.begin(db, core_id, after)
            entry = self._entry(self._row(db, core_id))
        if vacuum and entry.complete:
            self.vacuum(exclude=(core_id,))
        return entry

    def fail(self, core_id: int, why: str) -> Entry:
        """Mark a pending entry failed; remove its file if the writer had already linked it."""
        with self._db.tx() as db:
            row = self._row(db, core_id)
            if row["status"] != PENDING:
                raise StoreError(f"core {core_id} is {row['status']!r}, not pending; cannot fail it")
            fsutil.drop_core(self._cores_fd, self.cores_dir, row["name"], only_ours=True)
            db.execute(
                "UPDATE cores SET status = ?, size = 0, disk_bytes = 0 WHERE id = ?",
                (f"{FAILED}: {one_line(why) or 'unknown error'}", core_id),
            )
            return self._entry(self._row(db, core_id))

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
    ) -> builtins.list[Entry]:
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
        cols = "*" if context else LIST_COLUMNS
        sql = f"SELECT {cols} FROM cores"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, id"
        with self._db.reading() as db:
            entries = [self._entry(r) for r in db.execute(sql, args)]
        return self.shipping.decorate(entries)

    def get(self, core_id: int) -> Entry:
        with self._db.reading() as db:
            entry = self._entry(self._row(db, core_id))
        return self.shipping.decorate([entry])[0]

    def usage(self) -> int:
        """Bytes on disk used by complete cores."""
        with self._db.reading() as db:
            row = db.execute(
                "SELECT COALESCE(SUM(disk_bytes), 0) FROM cores WHERE status = ?", (COMPLETE,)
            ).fetchone()
            return int(row[0])

    def remove(self, core_id: int) -> Entry:
        """Delete a core file and its entry (file first: a crash in between leaves a row whose
        file is missing, which recovery reports, never an unlisted file)."""
        with self._db.tx() as db:
            entry = self._entry(self._row(db, core_id))
            if entry.pending:
                raise CoreBusy(core_id, "remove")
            fsutil.drop_core(self._cores_fd, self.cores_dir, entry.name, only_ours=False)
            self.shipping.forget(db, core_id)
            db.execute("DELETE FROM cores WHERE id = ?", (core_id,))
        return entry

    # -- start-up recovery and retention ------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Remove the writer's partial files, fail pending entries (deleting their files),
        and report complete entries whose file vanished and files no entry names."""
        with self._db.tx() as db:
            names = {r["name"]: r["status"] for r in db.execute("SELECT name, status FROM cores")}
            self.recovery.partial_removed += self.shipping.recover(db, self._cores_fd, names)
            recover(db, self._cores_fd, self.cores_dir, self.recovery)
        return self.recovery

    def vacuum(
        self, *, exclude: Iterable[int] = (), now: float | None = None, settle: float = 0.0
    ) -> builtins.list[Entry]:
        """Apply the retention limits (:func:`snapd.store.vacuum.plan`); pending entries and
        ``exclude`` are spared. Returns the removed entries, oldest first. ``settle``: wait up
        to that long for the file system to give the removed files' blocks back (before a dump:
        the kernel may free them a little after the unlink, :func:`fsutil.await_free`)."""
        now = time.time() if now is None else now
        with self._db.tx() as db:
            rows = db.execute(
                f"SELECT {LIST_COLUMNS} FROM cores WHERE status != ? ORDER BY created, id",
                (PENDING,),
            ).fetchall()
            vfs = os.fstatvfs(self._cores_fd)
            space = vacuum.Space(size=vfs.f_blocks * vfs.f_frsize, free=vfs.f_bavail * vfs.f_frsize)
            entries = [self._entry(r) for r in rows]
            # Bytes on disk: the core, its bundle waiting for upload, the binaries kept for it.
            extra = self.shipping.footprints(db, entries, self.elf_bytes)
            entries = [
                dataclasses.replace(e, disk_bytes=e.disk_bytes + extra[e.id]) if extra.get(e.id) else e
                for e in entries
            ]
            doomed = vacuum.plan(entries, self.retention, space, now, set(exclude))
            freed = 0
            for e in doomed:
                if e.complete:
                    st = fsutil.lstat_at(self._cores_fd, e.name)
                    if fsutil.drop_core(self._cores_fd, self.cores_dir, e.name, only_ours=False) and st:
                        freed += st.st_blocks * 512 if st.st_nlink == 1 else 0
                self.shipping.forget(db, e.id)
                db.execute("DELETE FROM cores WHERE id = ? AND status != ?", (e.id, PENDING))
        for e in doomed:
            if e.complete:
                log.info("retention: removed core %d (%s, %d bytes on disk)", e.id, e.name, e.disk_bytes)
            for hook in self.removed:
                hook(e)  # a reader of the file is stopped: its blocks can come back
        if settle > 0 and freed:
            want = space.free + freed * 9 // 10  # others may be writing meanwhile
            got = fsutil.await_free(self._cores_fd, want, settle)
            if got < want:
                log.info(
                    "retention: %d MiB removed, but only %d MiB came back within %.1f s: "
                    "something else still holds the removed files",
                    freed >> 20,
                    max(0, got - space.free) >> 20,
                    settle,
                )
        return doomed
