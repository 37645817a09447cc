"""The catalog's ``reports`` table: each published core's morning report, its state and times,
and the firing it belongs to (the table is :data:`snapd.store.migrations.REPORTS`).

A report is queued when its core is published, runs later in a sandboxed worker, and ends
``complete`` or ``failed: why``; a core whose report failed stays listed and usable. The report
is stored as the JSON the worker produced (already checked by ``snapd.report.Report.from_dict``);
the store keeps it whole and does not look inside.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from snapd.store.db import Database
from snapd.store.entry import db_text, one_line

QUEUED = "queued"
RUNNING = "running"
COMPLETE = "complete"
FAILED = "failed"

_STATE_COLUMNS = "core_id, firing, status, queued, started, ended, where_, request"


@dataclass(frozen=True)
class ReportState:
    """One row: where a core's report is in its life, and the report once it is done."""

    core_id: int
    firing: int  # the id of the first core of the firing (itself, unless a repeat core)
    status: str  # "queued" | "running" | "complete" | "failed: why"
    queued: float  # unix time
    started: float | None
    ended: float | None
    where: str  # the list-cores WHERE column ("" until the report is done)
    request: dict[str, Any]  # what the report is computed from (firing_tid, event)
    report: dict[str, Any] | None = None  # only from get()

    @property
    def done(self) -> bool:
        return self.status == COMPLETE or self.status.startswith(FAILED)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("request")
        d.pop("report")
        return d


def _state(row: Any, with_report: bool = False) -> ReportState:
    return ReportState(
        core_id=int(row["core_id"]),
        firing=int(row["firing"]),
        status=str(row["status"]),
        queued=float(row["queued"]),
        started=row["started"],
        ended=row["ended"],
        where=str(row["where_"]),
        request=json.loads(row["request"] or "{}"),
        report=json.loads(row["report"]) if with_report and row["report"] else None,
    )


class ReportStore:
    """Reads and writes of the ``reports`` table (``catalog.reports``), from any thread."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def queue(
        self,
        core_id: int,
        *,
        firing: int | None = None,
        request: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> bool:
        """Record that ``core_id``'s report is to be computed (again, if it was). False when
        the core is no longer in the catalog (removed meanwhile)."""
        when = time.time() if now is None else now
        with self._db.tx() as db:
            cur = db.execute(
                "INSERT OR REPLACE INTO reports (core_id, firing, status, queued, request) "
                "SELECT id, ?, ?, ?, ? FROM cores WHERE id = ?",
                (
                    int(firing if firing is not None else core_id),
                    QUEUED,
                    when,
                    json.dumps(dict(request or {}), default=str),
                    int(core_id),
                ),
            )
            return cur.rowcount > 0

    def start(self, core_id: int, now: float | None = None) -> None:
        when = time.time() if now is None else now
        with self._db.tx() as db:
            db.execute(
                "UPDATE reports SET status = ?, started = ?, ended = NULL WHERE core_id = ?",
                (RUNNING, when, int(core_id)),
            )

    def finish(self, core_id: int, report: Mapping[str, Any], where: str, now: float | None = None) -> str:
        """Store a finished report (one whose ``error`` is set is ``failed: error``); the
        status recorded."""
        when = time.time() if now is None else now
        err = report.get("error")
        status = f"{FAILED}: {one_line(str(err)) or 'unknown error'}" if err else COMPLETE
        with self._db.tx() as db:
            db.execute(
                "UPDATE reports SET status = ?, ended = ?, where_ = ?, report = ? WHERE core_id = ?",
                (status, when, db_text(where), json.dumps(dict(report), default=str), int(core_id)),
            )
        return status

    def fail(self, core_id: int, why: str, now: float | None = None) -> str:
        """A report that never ran (skipped, cancelled): ``failed: why``, no report."""
        return self.finish(core_id, {"error": why, "threads": [], "modules": []}, "-", now)

    def get(self, core_id: int) -> ReportState | None:
        with self._db.reading() as db:
            row = db.execute("SELECT * FROM reports WHERE core_id = ?", (int(core_id),)).fetchone()
        return _state(row, with_report=True) if row is not None else None

    def states(self, core_ids: Iterable[int] | None = None) -> dict[int, ReportState]:
        """The rows of ``core_ids`` (all when None), without the reports themselves."""
        with self._db.reading() as db:
            if core_ids is None:
                rows = db.execute(f"SELECT {_STATE_COLUMNS} FROM reports").fetchall()
            else:
                ids = sorted({int(i) for i in core_ids})
                rows = []
                for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                    chunk = ids[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    rows += db.execute(
                        f"SELECT {_STATE_COLUMNS} FROM reports WHERE core_id IN ({marks})", chunk
                    ).fetchall()
        return {int(r["core_id"]): _state(r) for r in rows}

    def unfinished(self) -> list[ReportState]:
        """Reports queued or running when the last daemon stopped, oldest first."""
        with self._db.reading() as db:
            rows = db.execute(
                f"SELECT {_STATE_COLUMNS} FROM reports WHERE status IN (?, ?) ORDER BY queued, core_id",
                (QUEUED, RUNNING),
            ).fetchall()
        return [_state(r) for r in rows]

    def firing(self, firing: int) -> list[int]:
        """The cores of one firing (a ``repeat: N`` series), oldest first."""
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT core_id FROM reports WHERE firing = ? ORDER BY core_id", (int(firing),)
            ).fetchall()
        return [int(r[0]) for r in rows]
