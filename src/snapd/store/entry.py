"""A catalog entry: the row's columns, its statuses, and how text reaches SQLite."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

PENDING = "pending"
COMPLETE = "complete"
FAILED = "failed"
#: uploaded, and the local file dropped after it (``upload: keep_local: false``): the core is
#: in the object store only
REMOTE = "remote"

MAX_WHY = 500  # characters of a failure's reason

#: What list-cores shows (the context and info blobs are left out).
LIST_COLUMNS = (
    "id, name, rule, pid, comm, exe, cmdline, uid, cgroup, unit, time, created, trigger, content, "
    "snapshot, size, disk_bytes, threads, freeze_seconds, dump_seconds, status"
)


def iso_utc(when: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``: ``2026-11-27T01:02:03.456Z``."""
    d = _dt.datetime.fromtimestamp(when, _dt.timezone.utc)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def db_text(s: object) -> str:
    """``s`` as valid UTF-8: target-controlled strings may carry surrogate escapes."""
    return str(s).encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(s: str, limit: int = MAX_WHY) -> str:
    return " ".join(db_text(s).split())[:limit]


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
    status: str  # "pending" | "complete" | "remote" | "failed: why"
    context: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: after publication (snapd.store.shipping): "zstd" when stored compressed
    compression: str = ""
    #: its upload: {"state": "queued"|"uploaded"|"failed: why", "key", "attempts", "error",
    #: "uploaded_at"}, or None when it is not uploaded
    upload: dict[str, Any] | None = None
    build_ids: list[str] = field(default_factory=list)  # the ELF files kept for it (info only)

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def failed(self) -> bool:
        return self.status.startswith(FAILED)

    def to_dict(self, *, context: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not context:
            d.pop("context")
            d.pop("info")
            d.pop("build_ids")
        return d

    @classmethod
    def from_row(cls, row: sqlite3.Row, cores_dir: str) -> Entry:
        keys = row.keys()
        return cls(
            id=row["id"],
            name=row["name"],
            path=os.path.join(cores_dir, row["name"]),
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
