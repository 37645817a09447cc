"""Start-up recovery and crash safety: partial files, pending rows, SQLite after SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.store import PARTIAL_PREFIX, Catalog, Entry, StoreError
from support.paths import child_env
from support.waiting import wait_for

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_recovery_removes_partials_and_fails_pending(
    state_dir: Path, catalog: Catalog, take: Callable[..., Entry], core_writer: Callable[..., object]
) -> None:
    done = take(rule="ok")
    # A dump cut short before the link: only the writer's temp file exists.
    cut = catalog.reserve(rule="cut", pid=7)
    partial = Path(catalog.cores_dir) / f"{PARTIAL_PREFIX}7.abcd"
    partial.write_bytes(b"\x7fELF half a core")
    # A dump cut short after the link but before publish: the final name exists, row pending.
    linked = catalog.reserve(rule="linked", pid=8)
    core_writer(linked.path)
    # A complete core whose file someone deleted by hand, and a stray file nobody listed.
    gone = take(rule="gone")
    os.unlink(gone.path)
    (Path(catalog.cores_dir) / "stray").write_bytes(b"x")
    catalog.close()

    with Catalog(state_dir) as again:
        rep = again.recovery
        assert rep.partial_removed == [partial.name]
        assert sorted(rep.pending_failed) == sorted([cut.id, linked.id])
        assert rep.missing == [gone.id]
        assert rep.orphans == ["stray"]
        assert not partial.exists()
        assert not os.path.exists(linked.path), "an unpublished core is never kept"
        names = os.listdir(again.cores_dir)
        assert not [n for n in names if n.startswith(PARTIAL_PREFIX)]
        listed = {e.id: e.status for e in again.list()}
        assert listed[done.id] == "complete"
        assert listed[cut.id].startswith("failed: the daemon stopped")
        assert listed[linked.id].startswith("failed: ")
        assert listed[gone.id].startswith("failed: core file missing")
        assert all(e.status != "pending" for e in again.list(include_pending=True))


def test_corrupt_catalog_is_moved_aside(
    state_dir: Path, catalog: Catalog, take: Callable[..., Entry]
) -> None:
    e = take()
    catalog.close()
    for suffix in ("-wal", "-shm"):
        p = state_dir / f"catalog.db{suffix}"
        if p.exists():
            p.unlink()
    (state_dir / "catalog.db").write_bytes(b"this is not a database" * 1000)
    with Catalog(state_dir) as again:
        assert again.recovery.db_reset
        assert os.path.exists(again.recovery.db_reset)
        assert again.list() == []
        assert again.recovery.orphans == [os.path.basename(e.path)]
        assert again.integrity_check() == ["ok"]


_MID_TX = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {src!r})
    from snapd.store import Catalog
    cat = Catalog({state!r})
    db = cat._db._conn()  # the catalog's own sqlite3 connection
    db.execute("BEGIN IMMEDIATE")
    for i in range(2000):
        db.execute(
            "INSERT INTO cores (name, rule, pid, time, created, status) "
            "VALUES (?, 'tx', 1, 'x', 0, 'complete')",
            (f"tx{{i}}",),
        )
    print("ready", flush=True)
    time.sleep(600)
    """
)

_CHURN = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {src!r})
    from snapd.store import Catalog, Retention
    from snapd.store.retention import ByteLimit
    from support.standin import write_like_core_writer
    cat = Catalog({state!r}, Retention(max_use=ByteLimit(64 * 1024), keep_free=None))
    print("ready", flush=True)
    n = 0
    while True:
        e = cat.reserve(rule="churn", pid=os.getpid(), context={{"n": n, "pad": "x" * 20000}})
        info = write_like_core_writer(e.path, b"\\x7fELF" + os.urandom(16384), os.getpid())
        cat.publish(e.id, info)
        n += 1
    """
)


def test_sigkill_mid_transaction_leaves_sound_db(state_dir: Path, spawn: Callable[..., object]) -> None:
    Catalog(state_dir).close()
    v = spawn([sys.executable, "-c", _MID_TX.format(src=SRC, state=str(state_dir))])
    os.kill(v.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    v.kill()  # type: ignore[attr-defined]
    raw = sqlite3.connect(state_dir / "catalog.db")
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert raw.execute("SELECT COUNT(*) FROM cores").fetchone()[0] == 0, "the cut transaction is rolled back"
    raw.close()
    with Catalog(state_dir) as again:
        assert again.integrity_check() == ["ok"]
        assert again.list() == []


def test_sigkill_during_churn_repeatedly(state_dir: Path, spawn: Callable[..., object]) -> None:
    for round_ in range(6):
        v = spawn([sys.executable, "-c", _CHURN.format(src=SRC, state=str(state_dir))], env=child_env())
        target = 5 + round_ * 7
        db = state_dir / "catalog.db"

        def progressed(target: int = target, db: Path = db) -> bool:
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                try:
                    return (con.execute("SELECT MAX(id) FROM cores").fetchone()[0] or 0) >= target
                finally:
                    con.close()
            except sqlite3.Error:
                return False

        wait_for(progressed, 30, f"churn round {round_} to write cores")
        os.kill(v.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        v.kill()  # type: ignore[attr-defined]
        with Catalog(state_dir) as cat:
            assert cat.integrity_check() == ["ok"]
            entries = cat.list(include_pending=True)
            assert all(e.status != "pending" for e in entries)
            names = os.listdir(cat.cores_dir)
            assert not [n for n in names if n.startswith(PARTIAL_PREFIX)], names
            listed = {os.path.basename(e.path) for e in entries if e.complete}
            assert listed <= set(names), "every complete entry has its file"
            for e in entries:
                if e.complete:
                    assert os.path.getsize(e.path) == e.size


def test_one_owner_per_state_dir(state_dir: Path, catalog: Catalog, take: Callable[..., Entry]) -> None:
    e = catalog.reserve(rule="r", pid=1)  # a dump in progress in the owning daemon
    partial = Path(catalog.cores_dir) / f"{PARTIAL_PREFIX}1.x"
    partial.write_bytes(b"being written")
    with pytest.raises(StoreError, match="in use by another snapd daemon"):
        Catalog(state_dir)
    assert partial.exists() and catalog.get(e.id).pending, "nothing recovered under a live owner"
    with Catalog(state_dir, recover=False) as reader:
        assert reader.list(include_pending=True)[0].id == e.id
    assert partial.exists()
