"""A series of cores of one process as a trend table: one row per core, and the change between
each core and the next (a ``repeat: N`` firing, or one rule and pid over time)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snapd.diff.cores import diff_cores
from snapd.diff.errors import DiffError
from snapd.diff.model import size_text
from snapd.diff.render import when
from snapd.text import safe

#: A series entry: a core path, or {"path": ..., "id": ..., "context": {...}, "report": {...}}
#: as the catalog holds them, with "fd" when the core is already open (see diff_cores' fds).
Entry = str | Mapping[str, Any]


@dataclass
class SeriesRow:
    label: str  # the catalog id, else the path
    path: str
    time: float = 0.0
    pid: int = 0
    threads: int = 0
    fds: int | None = None  # from the context, when there is one
    resident: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    # the change from the row before (none for the first):
    resident_delta: int | None = None
    changed_pages: int | None = None
    threads_added: int | None = None
    threads_removed: int | None = None
    fds_opened: int | None = None
    fds_closed: int | None = None
    summary: str = ""
    error: str = ""  # why this row could not be compared with the one before


@dataclass
class Series:
    rows: list[SeriesRow]

    @property
    def classes(self) -> list[str]:
        """The classes worth a column: those holding memory in some core, largest first."""
        peak: dict[str, int] = {}
        for r in self.rows:
            for c, n in r.by_class.items():
                peak[c] = max(peak.get(c, 0), n)
        return [c for c, n in sorted(peak.items(), key=lambda kv: -kv[1]) if n]

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes, "rows": [dict(r.__dict__) for r in self.rows]}

    def text(self, max_classes: int = 5) -> str:
        classes = self.classes[:max_classes]
        head = f"  {'CORE':<14} {'TIME':<23} {'TOTAL':>10} " + "".join(f"{c[:10]:>11}" for c in classes)
        head += f" {'THREADS':>7} {'FDS':>5} {'DELTA':>11} {'CHANGED':>8}"
        out = [head]
        for r in self.rows:
            fds = "-" if r.fds is None else str(r.fds)
            delta = "" if r.resident_delta is None else size_text(r.resident_delta, signed=True)
            changed = "" if r.changed_pages is None else str(r.changed_pages)
            line = f"  {safe(r.label)[:14]:<14} {when(r.time):<23} {size_text(r.resident):>10} "
            line += "".join(f"{size_text(r.by_class.get(c, 0)):>11}" for c in classes)
            line += f" {r.threads:>7} {fds:>5} {delta:>11} {changed:>8}"
            out.append(line)
        out.append("")
        for prev, r in zip(self.rows, self.rows[1:], strict=False):
            what = f"error: {safe(r.error)}" if r.error else r.summary
            out.append(f"  {safe(prev.label)} -> {safe(r.label)}: {what}")
        return "\n".join(out)


_Item = tuple[str, str, Mapping[str, Any] | None, Mapping[str, Any] | None, int | None]


def _entry(e: Entry) -> _Item:
    if isinstance(e, str):
        return e, e, None, None, None
    path = e.get("path")
    if not isinstance(path, str):
        raise DiffError("a series entry has no core path")
    label = e.get("id", path)
    ctx, rep, fd = e.get("context"), e.get("report"), e.get("fd")
    return (
        path,
        str(label),
        ctx if isinstance(ctx, Mapping) else None,
        rep if isinstance(rep, Mapping) else None,
        fd if isinstance(fd, int) and not isinstance(fd, bool) else None,
    )


def series(entries: Iterable[Entry], *, workers: int | None = None) -> Series:
    """Diff each core with the next. A pair that cannot be compared (a core unreadable, or of
    another process: a pid reused) gets its error in the later row; the series goes on."""
    items = [_entry(e) for e in entries]
    if len(items) < 2:
        raise DiffError(f"a series needs at least two cores, got {len(items)}")
    rows = [SeriesRow(label, path) for path, label, _, _, _ in items]
    for i in range(1, len(items)):
        (pa, _, ca, rpa, fa), (pb, _, cb, rpb, fb) = items[i - 1], items[i]
        row, prev = rows[i], rows[i - 1]
        try:
            d = diff_cores(
                pa,
                pb,
                top=2,
                context=(ca, cb) if ca is not None and cb is not None else None,
                reports=(rpa, rpb),
                workers=workers,
                fds=(fa, fb) if fa is not None and fb is not None else None,
            )
        except DiffError as err:
            row.error = str(err)
            continue
        for r, side in ((prev, d.a), (row, d.b)):
            r.time, r.pid, r.threads, r.resident = side.time, side.pid, side.threads, side.resident
        prev.by_class = {c.cls: c.a for c in d.by_class}
        row.by_class = {c.cls: c.b for c in d.by_class}
        row.resident_delta = d.resident_delta
        row.changed_pages = d.changed_pages
        row.threads_added, row.threads_removed = len(d.threads.added), len(d.threads.removed)
        if d.context is not None:
            prev.fds, row.fds = d.context.fds_a, d.context.fds_b
            row.fds_opened, row.fds_closed = len(d.context.opened), len(d.context.closed)
        row.summary = d.summary()
    return Series(rows)
