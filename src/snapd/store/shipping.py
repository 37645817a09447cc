"""What happens to a core after it is published: the binaries kept for it, compression at rest,
its upload (issue 13). One row per entry in the ``shipping`` table (snapd.store.migrations.SHIPPING), written
in the same transaction as the entry's publication, so that a daemon restarted at any point
takes up the work where it stopped.

Stages: ``capture`` (keep the ELF files it maps) -> ``store`` (compress it, write its bundle)
-> ``upload`` (the uploader holds it; its resumable state is here) -> ``done``. Files are
swapped with the crash in mind: a compressed core is linked beside the original, the entry
then points at it, then the original goes; start-up recovery finishes whichever half a crash
left (:func:`recover`). Bundles waiting for upload live in ``outbox/``, count as the entry's
bytes on disk, and go with it.

The store knows nothing of the ship stage: rows are plain values and the uploader's state a
JSON-able dict; the daemon adapts them (snapd.daemon.uploads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from snapd.atomicfile import PARTIAL_PREFIX
from snapd.store import fsutil
from snapd.store.db import Database
from snapd.store.entry import COMPLETE, FAILED, REMOTE, Entry, one_line

log = logging.getLogger("snapd.store")

OUTBOX_DIR = "outbox"
ELF_CACHE_DIR = "elfcache"
SCRATCH_DIR = "tmp"  # plain copies of compressed cores while a bundle is written from one
COMPRESSED_SUFFIX = ".zst"  # snapd.ship.compress.SUFFIX: the store only recognises its files

CAPTURE, STORE, UPLOAD, DONE = "capture", "store", "upload", "done"
QUEUED, UPLOADED = "queued", "uploaded"


@dataclass(frozen=True)
class ShipRow:
    core_id: int
    stage: str
    build_ids: list[str]
    exe_build_id: str
    compression: str
    data_bytes: int
    compress_seconds: float
    upload: str
    upload_key: str
    bundle: str
    bundle_bytes: int
    attempts: int
    last_error: str
    uploaded_at: float | None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> ShipRow:
        return cls(
            core_id=int(r["core_id"]),
            stage=r["stage"],
            build_ids=[str(b) for b in json.loads(r["build_ids"] or "[]")],
            exe_build_id=r["exe_build_id"],
            compression=r["compression"],
            data_bytes=int(r["data_bytes"]),
            compress_seconds=float(r["compress_seconds"]),
            upload=r["upload"],
            upload_key=r["upload_key"],
            bundle=r["bundle"],
            bundle_bytes=int(r["bundle_bytes"]),
            attempts=int(r["attempts"]),
            last_error=r["last_error"],
            uploaded_at=r["uploaded_at"],
        )

    def upload_view(self) -> dict[str, Any] | None:
        """What list-cores and info show of the upload."""
        if not self.upload:
            return None
        return {
            "state": self.upload,
            "key": self.upload_key,
            "attempts": self.attempts,
            "error": self.last_error,
            "uploaded_at": self.uploaded_at,
        }


class ShipLog:
    """The shipping rows of one catalog (``catalog.shipping``). Every method may be called from
    any thread (the database serialises them)."""

    def __init__(self, db: Database, state_fd: int, state_dir: str, cores_fd: int, cores_dir: str) -> None:
        self._db = db
        self._cores_fd = cores_fd
        self.cores_dir = cores_dir
        self.outbox_dir = os.path.join(state_dir, OUTBOX_DIR)
        self.elf_cache_dir = os.path.join(state_dir, ELF_CACHE_DIR)
        self._outbox_fd = fsutil.open_dir(OUTBOX_DIR, 0o700, at=state_fd, label=self.outbox_dir)
        os.fchmod(self._outbox_fd, 0o700)
        self.scratch_dir = os.path.join(state_dir, SCRATCH_DIR)
        os.close(fsutil.open_dir(SCRATCH_DIR, 0o700, at=state_fd, label=self.scratch_dir))
        #: set by the daemon when uploads are configured: an entry still before its upload
        #: (capture, store) then never reaches the object store if it is removed
        self.uploads = False

    def close(self) -> None:
        if self._outbox_fd >= 0:
            os.close(self._outbox_fd)
            self._outbox_fd = -1

    # --- the entry's side --------------------------------------------------------------------
    def begin(self, db: sqlite3.Connection, core_id: int, stage: str) -> None:
        """Inside the publishing transaction ``db``: the entry has work after publication."""
        db.execute("INSERT OR REPLACE INTO shipping (core_id, stage) VALUES (?, ?)", (int(core_id), stage))

    def rows(self, ids: Iterable[int] | None = None) -> dict[int, ShipRow]:
        with self._db.reading() as db:
            if ids is None:
                cur = db.execute("SELECT * FROM shipping")
            else:
                wanted = [int(i) for i in ids]
                if not wanted:
                    return {}
                marks = ",".join("?" * len(wanted))
                cur = db.execute(f"SELECT * FROM shipping WHERE core_id IN ({marks})", wanted)
            return {int(r["core_id"]): ShipRow.from_row(r) for r in cur}

    def decorate(self, entries: Sequence[Entry]) -> list[Entry]:
        """``entries`` with their compression, upload and kept build-ids filled in."""
        rows = self.rows(e.id for e in entries) if len(entries) < 500 else self.rows()
        out = []
        for e in entries:
            r = rows.get(e.id)
            if r is None:
                out.append(e)
            else:
                out.append(dataclasses.replace(
                    e, compression=r.compression, upload=r.upload_view(), build_ids=r.build_ids
                ))  # fmt: skip
        return out

    def unfinished(self) -> list[tuple[Entry, ShipRow]]:
        """Entries whose work after publication is not done, oldest first (resumed at start)."""
        with self._db.reading() as db:
            cur = db.execute(
                "SELECT c.*, s.core_id AS s_id FROM cores c JOIN shipping s ON s.core_id = c.id "
                "WHERE s.stage != ? AND c.status = ? ORDER BY c.created, c.id",
                (DONE, COMPLETE),
            )
            entries = [Entry.from_row(r, self.cores_dir) for r in cur]
        rows = self.rows(e.id for e in entries)
        return [(e, rows[e.id]) for e in entries if e.id in rows]

    def set_stage(self, core_id: int, stage: str, *, error: str = "") -> None:
        with self._db.tx() as db:
            db.execute(
                "UPDATE shipping SET stage = ?, last_error = CASE WHEN ? = '' THEN last_error ELSE ? END "
                "WHERE core_id = ?",
                (stage, error, one_line(error), int(core_id)),
            )

    def kept(self, core_id: int, build_ids: Sequence[str], exe_build_id: str, stage: str) -> None:
        """The ELF files ``build_ids`` are kept for the entry (whose next stage is ``stage``)."""
        with self._db.tx() as db:
            db.execute(
                "UPDATE shipping SET build_ids = ?, exe_build_id = ?, stage = ? WHERE core_id = ?",
                (json.dumps(sorted(set(build_ids))), exe_build_id, stage, int(core_id)),
            )

    def referenced_build_ids(self) -> set[str]:
        """Build-ids some core on disk still needs (the ELF cache keeps exactly these)."""
        with self._db.reading() as db:
            cur = db.execute(
                "SELECT s.build_ids FROM shipping s JOIN cores c ON c.id = s.core_id "
                "WHERE c.status IN (?, 'pending')",
                (COMPLETE,),
            )
            out: set[str] = set()
            for (raw,) in cur:
                out.update(str(b) for b in json.loads(raw or "[]"))
            return out

    # --- compression ---------------------------------------------------------------------------
    def compressed(self, core_id: int, old_name: str, new_name: str, data_bytes: int, seconds: float) -> bool:
        """The entry's core was compressed to ``new_name`` (beside it in cores/): point the entry
        at it, then remove the original. False (and ``new_name`` removed) if the entry is gone
        or changed meanwhile (ctl rm, retention)."""
        st = fsutil.lstat_at(self._cores_fd, new_name)
        if not fsutil.is_own_regular(st):
            return False
        assert st is not None
        with self._db.tx() as db:
            row = db.execute("SELECT name, status FROM cores WHERE id = ?", (int(core_id),)).fetchone()
            ok = row is not None and row["name"] == old_name and row["status"] == COMPLETE
            if ok:
                db.execute(
                    "UPDATE cores SET name = ?, disk_bytes = ? WHERE id = ?",
                    (new_name, st.st_blocks * 512, int(core_id)),
                )
                db.execute(
                    "UPDATE shipping SET compression = 'zstd', data_bytes = ?, compress_seconds = ? "
                    "WHERE core_id = ?",
                    (int(data_bytes), float(seconds), int(core_id)),
                )
        # The entry names the compressed file now (committed): the original may go. A crash
        # before this line leaves it for recovery, which removes it.
        fsutil.drop_core(self._cores_fd, self.cores_dir, old_name if ok else new_name, only_ours=True)
        return ok

    # --- uploads -------------------------------------------------------------------------------
    def bundle_path(self, core_id: int) -> str:
        return os.path.join(self.outbox_dir, bundle_name(core_id))

    def drop_bundle(self, core_id: int) -> None:
        """Remove a bundle written for an entry that went meanwhile (never queued), and the
        temp file of one being written when its job was killed (atomicfile names it
        ``PARTIAL_PREFIX + name + ".RANDOM"``): the caller has reaped that job, so nothing
        writes it any more, and its blocks are what retention was making room for."""
        name = bundle_name(core_id)
        fsutil.unlink_at(self._outbox_fd, name)
        for other in _scan(self._outbox_fd):
            if other.startswith(f"{PARTIAL_PREFIX}{name}."):
                fsutil.unlink_at(self._outbox_fd, other)

    def queued(self, core_id: int, key: str) -> bool:
        """The entry's bundle (:meth:`bundle_path`) is written; it is queued for upload as
        ``key``. False (and the bundle removed) if the entry went meanwhile."""
        name = bundle_name(core_id)
        st = fsutil.lstat_at(self._outbox_fd, name)
        with self._db.tx() as db:
            row = db.execute("SELECT status FROM cores WHERE id = ?", (int(core_id),)).fetchone()
            ok = row is not None and row["status"] == COMPLETE and fsutil.is_own_regular(st)
            if ok:
                assert st is not None
                db.execute(
                    "UPDATE shipping SET stage = ?, upload = ?, upload_key = ?, bundle = ?, "
                    "bundle_bytes = ?, attempts = 0, last_error = '' WHERE core_id = ?",
                    (UPLOAD, QUEUED, key, name, st.st_blocks * 512, int(core_id)),
                )
        if not ok:
            fsutil.unlink_at(self._outbox_fd, name)
        return ok

    def upload_states(self) -> list[dict[str, Any]]:
        """Every queued upload's saved state (the uploader resumes them)."""
        with self._db.reading() as db:
            cur = db.execute(
                "SELECT upload_state FROM shipping WHERE upload = ? AND upload_state IS NOT NULL",
                (QUEUED,),
            )
            out = []
            for (raw,) in cur:
                try:
                    d = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(d, dict):
                    out.append(d)
            return out

    def save_upload_state(self, core_id: int, state: dict[str, Any], attempts: int, error: str) -> None:
        """Record the uploader's state of a queued upload (a no-op once the entry is gone)."""
        with self._db.tx() as db:
            db.execute(
                "UPDATE shipping SET upload_state = ?, attempts = ?, last_error = ? "
                "WHERE core_id = ? AND upload = ?",
                (json.dumps(state), int(attempts), one_line(error), int(core_id), QUEUED),
            )

    def upload_done(
        self, core_id: int, *, ok: bool, error: str = "", attempts: int = 0, keep_local: bool = True,
        now: float = 0.0,
    ) -> Entry | None:  # fmt: skip
        """The upload ended: record it and remove the bundle; with ``keep_local=False`` and
        success, the core file goes too and the entry is ``remote``. Returns the entry (None if
        it is gone)."""
        with self._db.tx() as db:
            row = db.execute("SELECT * FROM cores WHERE id = ?", (int(core_id),)).fetchone()
            srow = db.execute("SELECT bundle FROM shipping WHERE core_id = ?", (int(core_id),)).fetchone()
            if srow is not None and srow["bundle"]:
                fsutil.unlink_at(self._outbox_fd, srow["bundle"])
            if row is None or srow is None:
                return None
            state = UPLOADED if ok else f"{FAILED}: {one_line(error) or 'unknown error'}"
            db.execute(
                "UPDATE shipping SET stage = ?, upload = ?, upload_state = NULL, bundle = '', "
                "bundle_bytes = 0, attempts = ?, last_error = ?, uploaded_at = ? WHERE core_id = ?",
                (DONE, state, int(attempts), "" if ok else one_line(error), now if ok else None,
                 int(core_id)),
            )  # fmt: skip
            if ok and not keep_local and row["status"] == COMPLETE:
                # Uploaded, and the operator keeps no local copy: the entry stays, pointing at
                # the object. Unlink first: a crash before the commit leaves a complete entry
                # without its file, which recovery reports as missing.
                fsutil.drop_core(self._cores_fd, self.cores_dir, row["name"], only_ours=False)
                db.execute("UPDATE cores SET status = ?, disk_bytes = 0 WHERE id = ?", (REMOTE, int(core_id)))
            row = db.execute("SELECT * FROM cores WHERE id = ?", (int(core_id),)).fetchone()
            return Entry.from_row(row, self.cores_dir)

    def backlog(self) -> tuple[int, int]:
        """(uploads queued, bytes of their bundles)."""
        with self._db.reading() as db:
            n, b = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bundle_bytes), 0) FROM shipping WHERE upload = ?", (QUEUED,)
            ).fetchone()
            return int(n), int(b)

    def outbox_bytes(self) -> int:
        with self._db.reading() as db:
            return int(db.execute("SELECT COALESCE(SUM(bundle_bytes), 0) FROM shipping").fetchone()[0])

    # --- what the catalog calls inside its transactions --------------------------------------
    def footprints(
        self, db: sqlite3.Connection, entries: Sequence[Entry], elf_bytes: Callable[[str], int] | None
    ) -> dict[int, int]:
        """Bytes on disk each entry accounts for besides its core: its bundle waiting for upload,
        and the kept ELF files it is the newest user of (they go when it goes, not before)."""
        extra: dict[int, int] = {}
        newest: dict[str, int] = {}
        complete = {e.id for e in entries if e.complete}
        for r in db.execute("SELECT core_id, build_ids, bundle_bytes FROM shipping ORDER BY core_id"):
            cid = int(r["core_id"])
            extra[cid] = extra.get(cid, 0) + int(r["bundle_bytes"])
            if cid in complete:
                for b in json.loads(r["build_ids"] or "[]"):
                    newest[str(b)] = cid  # ids grow with time: the last one seen is the newest
        if elf_bytes is not None:
            for b, cid in newest.items():
                extra[cid] = extra.get(cid, 0) + elf_bytes(b)
        return extra

    def forget(self, db: sqlite3.Connection, core_id: int) -> None:
        """Inside the catalog's transaction that deletes entry ``core_id``: its row and bundle."""
        r = db.execute(
            "SELECT bundle, upload, stage FROM shipping WHERE core_id = ?", (int(core_id),)
        ).fetchone()
        if r is None:
            return
        if r["bundle"]:
            fsutil.unlink_at(self._outbox_fd, r["bundle"])
        # Queued, or still on its way to the queue (its binaries or its bundle): either way the
        # object store will never have it, which the operator who configured uploads must hear.
        if r["upload"] == QUEUED or (self.uploads and not r["upload"] and r["stage"] in (CAPTURE, STORE)):
            log.warning("core %d removed before it was uploaded", core_id)
        db.execute("DELETE FROM shipping WHERE core_id = ?", (int(core_id),))

    def recover(self, db: sqlite3.Connection, cores_fd: int, names: dict[str, str]) -> list[str]:
        """Start-up recovery's part (inside its transaction): a compression a crash interrupted,
        on either side of the entry's swap, and bundles no queued upload names. ``names``: file
        name -> status of every entry. Returns the files removed."""
        removed = []
        for name in _scan(cores_fd):
            if name in names or name.startswith(PARTIAL_PREFIX):
                continue
            plain = name.removesuffix(COMPRESSED_SUFFIX)
            # NAME.zst beside the entry NAME: compressed, but the swap did not commit (the work
            # is redone); NAME beside the entry NAME.zst: swapped, the original not yet removed.
            leftover = (plain != name and names.get(plain) == COMPLETE) or (
                names.get(name + COMPRESSED_SUFFIX) == COMPLETE
            )
            if leftover and fsutil.drop_core(cores_fd, self.cores_dir, name, only_ours=True):
                removed.append(name)
        wanted = {r[0] for r in db.execute("SELECT bundle FROM shipping WHERE bundle != ''")}
        for name in _scan(self._outbox_fd):
            st = fsutil.lstat_at(self._outbox_fd, name)
            if name not in wanted and st is not None and not stat.S_ISDIR(st.st_mode):
                fsutil.unlink_at(self._outbox_fd, name)
        # What a killed job left in its scratch directory (a directory only we can write).
        for name in os.listdir(self.scratch_dir):
            path = os.path.join(self.scratch_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        # A queued upload whose bundle is gone (removed by hand) is written again.
        for r in db.execute("SELECT core_id, bundle FROM shipping WHERE upload = ?", (QUEUED,)).fetchall():
            if r["bundle"] and fsutil.lstat_at(self._outbox_fd, r["bundle"]) is None:
                db.execute(
                    "UPDATE shipping SET stage = ?, upload = '', upload_state = NULL, bundle = '', "
                    "bundle_bytes = 0 WHERE core_id = ?",
                    (STORE, r["core_id"]),
                )
        return removed


def bundle_name(core_id: int) -> str:
    return f"core-{int(core_id)}.snapd"


def _scan(dir_fd: int) -> list[str]:
    with os.scandir(dir_fd) as it:
        return [e.name for e in it]
