"""The catalog's reports table: named migrations, a report's life, rows that follow their core."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.store import Catalog, Entry, Retention
from snapd.store.db import DB_NAME, SCHEMA
from snapd.store.migrations import MIGRATIONS, Migration, apply

REPORT = {"threads": [{"tid": 7, "frames": []}], "modules": [], "truncated": False, "error": None}


def test_a_catalog_of_before_the_migration_gets_its_reports_table(state_dir: Path) -> None:
    # A catalog as snapd wrote it before the reports table: the cores table only.
    state_dir.mkdir(mode=0o700)
    db = sqlite3.connect(state_dir / DB_NAME)
    db.executescript(SCHEMA)
    db.execute(
        "INSERT INTO cores (name, rule, pid, time, created, status) "
        "VALUES ('old.core', 'r', 1, '2026-01-01T00:00:00.000Z', 1.0, 'complete')"
    )
    db.commit()
    db.close()
    with Catalog(state_dir, Retention(max_use=None, keep_free=None)) as cat:
        assert [e.name for e in cat.list(include_pending=True)] == ["old.core"]
        assert cat.reports.get(1) is None  # taken before reports: none, and no error
        assert cat.reports.queue(1, request={"firing_tid": None})
        assert cat.reports.get(1) is not None
    db = sqlite3.connect(state_dir / DB_NAME)
    names = [r[0] for r in db.execute("SELECT name FROM migrations")]
    db.close()
    assert names == [m.name for m in MIGRATIONS]


def test_migrations_run_once_each_and_compose_by_name(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    db.executescript(SCHEMA)
    assert apply(db) == [m.name for m in MIGRATIONS]
    assert apply(db) == []
    # another branch's migration, added later under its own name: applied alone
    theirs = Migration("uploads-1", ("CREATE TABLE uploads (core_id INTEGER PRIMARY KEY)",))
    assert apply(db, (*MIGRATIONS, theirs)) == ["uploads-1"]
    assert apply(db, (*MIGRATIONS, theirs)) == []
    # a migration that fails leaves nothing behind, and is tried again next time
    bad = Migration("bad-1", ("CREATE TABLE half (x)", "CREATE TABLE half (y)"))
    with pytest.raises(sqlite3.OperationalError):
        apply(db, (bad,))
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'half'").fetchone()
    assert "bad-1" not in {r[0] for r in db.execute("SELECT name FROM migrations")}
    db.close()


def test_a_reports_life(catalog: Catalog, take: Callable[..., Entry]) -> None:
    e = take()
    assert catalog.reports.queue(e.id, request={"firing_tid": 7}, now=10.0)
    st = catalog.reports.get(e.id)
    assert st is not None and (st.status, st.queued, st.started, st.firing) == ("queued", 10.0, None, e.id)
    assert st.request == {"firing_tid": 7} and st.report is None and not st.done
    assert [s.core_id for s in catalog.reports.unfinished()] == [e.id]
    catalog.reports.start(e.id, now=11.0)
    assert catalog.reports.get(e.id).status == "running"  # type: ignore[union-attr]
    assert [s.core_id for s in catalog.reports.unfinished()] == [e.id]
    assert catalog.reports.finish(e.id, REPORT, "main_wait", now=12.5) == "complete"
    st = catalog.reports.get(e.id)
    assert st is not None and st.done and (st.started, st.ended, st.where) == (11.0, 12.5, "main_wait")
    assert st.report == REPORT
    assert catalog.reports.unfinished() == []
    assert catalog.reports.states([e.id])[e.id].where == "main_wait"
    assert catalog.reports.states([e.id])[e.id].report is None  # list-cores reads no report


def test_a_failed_report_is_one_line_and_the_core_stays(catalog: Catalog, take: Callable[..., Entry]) -> None:
    e = take()
    catalog.reports.queue(e.id)
    catalog.reports.start(e.id)
    status = catalog.reports.finish(e.id, {"error": "timed out after 0.3 s\n(killed)", "threads": []}, "-")
    assert status == "failed: timed out after 0.3 s (killed)"
    assert catalog.get(e.id).complete
    assert [x.id for x in catalog.list()] == [e.id]
    assert catalog.reports.fail(e.id, "skipped: too many reports queued").startswith("failed: skipped")


def test_rows_follow_their_core(catalog: Catalog, take: Callable[..., Entry]) -> None:
    a, b, c = take(), take(), take()
    for e in (a, b, c):
        catalog.reports.queue(e.id, firing=a.id)
    assert catalog.reports.firing(a.id) == [a.id, b.id, c.id]
    catalog.remove(b.id)
    assert catalog.reports.get(b.id) is None
    assert catalog.reports.firing(a.id) == [a.id, c.id]
    assert not catalog.reports.queue(b.id)  # a removed core gets no report row
    assert set(catalog.reports.states()) == {a.id, c.id}
