"""The records a diff hands back: plain dataclasses, ``to_dict()`` in the shape of ``--json``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from snapd.text import safe

PAGE = 4096


def size_text(n: float, signed: bool = False) -> str:
    """1536 -> '1.5 KiB'; with ``signed`` a '+' or '-' in front (0 stays '0 B')."""
    sign = ("+" if n > 0 else "-" if n < 0 else "") if signed else ("-" if n < 0 else "")
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TiB"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass
class CoreSide:
    """Which core, of which process, taken when."""

    path: str
    pid: int
    comm: str
    exe: str
    time: float
    time_source: str  # "snapd" (its note) or "mtime" (the file's, for cores without the note)
    threads: int
    resident: int  # bytes of data (not holes) in the core's memory segments
    start_time: int | None  # /proc/PID/stat starttime, from snapd's note
    producer: str  # "snapd", "gdb" or "kernel" (see snapd.diff.corefile.CoreImage.producer)
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ClassDelta:
    """Resident bytes of one content class (heap, anon, stack, ...) in A and in B."""

    cls: str
    a: int
    b: int

    @property
    def delta(self) -> int:
        return self.b - self.a


@dataclass
class MappingDelta:
    """One mapping of A and/or B: how it changed in size, residency and content."""

    start: int  # B's range when the mapping is in B, else A's
    end: int
    cls: str
    file: str
    status: str  # added | removed | grown | shrunk | same
    perms: str
    start_a: int | None
    end_a: int | None
    resident_a: int
    resident_b: int
    changed_pages: int = 0  # 4 KiB pages of the range both hold whose bytes differ
    compared_bytes: int = 0  # bytes of that range that were read (data on at least one side)
    changed_ranges: list[tuple[int, int]] = field(default_factory=list)  # first few, addresses

    @property
    def resident_delta(self) -> int:
        return self.resident_b - self.resident_a

    @property
    def weight(self) -> int:
        """How much this mapping matters in a diff: bytes gained or lost, or changed."""
        return max(abs(self.resident_delta), self.changed_pages * PAGE)

    @property
    def changed(self) -> bool:
        return self.status != "same" or self.changed_pages > 0 or self.resident_delta != 0

    def label(self) -> str:
        """'[anon 7f0a12340000]' or 'libc.so.6 7f0a12340000', for the summary."""
        if self.file:
            return f"{safe(os.path.basename(self.file))} {self.start:x}"
        return f"[{safe(self.cls)} {self.start:x}]"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["class"] = d.pop("cls")
        d["resident_delta"] = self.resident_delta
        d["changed_ranges"] = [list(r) for r in self.changed_ranges]
        return d


@dataclass
class ThreadsDelta:
    a: int  # threads in A
    b: int
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)  # top frames differ (needs stack reports)
    compared_stacks: bool = False  # whether stack reports of both cores were given


@dataclass
class ContextDiff:
    """What changed in the /proc context the catalog captured beside each core."""

    fds_a: int = 0
    fds_b: int = 0
    opened: list[dict[str, Any]] = field(default_factory=list)  # {"fd", "target"}
    closed: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)  # {"name", "a": {..}, "b": {..}}
    cgroup: dict[str, str] | None = None  # {"a", "b"} when it moved
    status: dict[str, dict[str, int]] = field(default_factory=dict)  # VmRSS etc: {a, b, delta}
    threads_a: int | None = None
    threads_b: int | None = None
    incomplete: list[str] = field(default_factory=list)  # sections missing or cut short

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Stats:
    compared_bytes: int = 0  # address range read on both sides and compared
    resident_bytes: int = 0  # data in A plus data in B
    seconds: float = 0.0  # wall time of the whole diff_cores()
    cpu_seconds: float = 0.0  # CPU time of this process meanwhile (all threads)
    window: int = 0

    @property
    def gbps(self) -> float:
        return self.compared_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass
class Diff:
    a: CoreSide
    b: CoreSide
    by_class: list[ClassDelta]
    mappings: list[MappingDelta]  # the changed mappings, most significant first, at most `top`
    mappings_total: int  # mappings of A and B, paired
    mappings_changed: int  # of which changed in size, residency or content
    changed_pages: int
    threads: ThreadsDelta
    context: ContextDiff | None = None
    stats: Stats = field(default_factory=Stats)
    warnings: list[str] = field(default_factory=list)

    @property
    def resident_delta(self) -> int:
        return self.b.resident - self.a.resident

    def summary(self) -> str:
        """One line: the biggest class changes, where pages changed, threads, fds."""
        parts = [
            f"{safe(c.cls)} {size_text(c.delta, signed=True)}"
            for c in sorted(self.by_class, key=lambda c: -abs(c.delta))[:3]
            if abs(c.delta) >= PAGE
        ]
        hot = sorted((m for m in self.mappings if m.changed_pages), key=lambda m: -m.changed_pages)
        for m in hot[:2]:
            parts.append(f"{plural(m.changed_pages, 'page')} changed in {m.label()}")
        rest = self.changed_pages - sum(m.changed_pages for m in hot[:2])
        if rest > 0:
            parts.append(f"{plural(rest, 'more page')} changed elsewhere")
        t = self.threads
        if t.added:
            parts.append(f"{plural(len(t.added), 'thread')} added")
        if t.removed:
            parts.append(f"{plural(len(t.removed), 'thread')} removed")
        if t.changed:
            parts.append(f"{plural(len(t.changed), 'thread')} moved")
        if self.context is not None:
            for verb, fds in (("opened", self.context.opened), ("closed", self.context.closed)):
                if fds:
                    names = ", ".join(safe(f.get("target", "?")) for f in fds[:3])
                    more = f", +{len(fds) - 3} more" if len(fds) > 3 else ""
                    parts.append(f"{plural(len(fds), 'fd')} {verb}: {names}{more}")
        return "; ".join(parts) if parts else "no change"

    def to_dict(self) -> dict[str, Any]:
        ctx = self.context
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "summary": {
                "text": self.summary(),
                "resident_delta": self.resident_delta,
                "changed_pages": self.changed_pages,
                "by_class": {c.cls: {"a": c.a, "b": c.b, "delta": c.delta} for c in self.by_class},
            },
            "mappings": [m.to_dict() for m in self.mappings],
            "mappings_total": self.mappings_total,
            "mappings_changed": self.mappings_changed,
            "threads": {
                "a": self.threads.a,
                "b": self.threads.b,
                "added": self.threads.added,
                "removed": self.threads.removed,
                "changed": self.threads.changed,
                "compared_stacks": self.threads.compared_stacks,
            },
            "fds": {
                "opened": ctx.opened if ctx else [],
                "closed": ctx.closed if ctx else [],
            },
            "context": ctx.to_dict() if ctx else None,
            "stats": {
                "compared_bytes": self.stats.compared_bytes,
                "resident_bytes": self.stats.resident_bytes,
                "seconds": self.stats.seconds,
                "cpu_seconds": self.stats.cpu_seconds,
                "window": self.stats.window,
            },
            "warnings": self.warnings,
        }
