"""What a report is computed from: the one record the caller sends the worker (as JSON).

Imports nothing heavy: the caller (the daemon) never loads drgn or pystack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snapd.report.model import EventStack, ReportLimits


@dataclass(frozen=True)
class ReportRequest:
    """Everything a report is computed from (sent to the worker as JSON)."""

    core_fd: int
    firing_tid: int | None = None
    exe: str | None = None  # the executable for pystack (default: the core's main module)
    search: tuple[str, ...] = ()  # files or directories with the binaries (``--exe``)
    limits: ReportLimits = field(default_factory=ReportLimits)
    #: tid -> (comm, state) from the /proc context captured with the core
    threads: dict[int, tuple[str, str]] = field(default_factory=dict)
    event: EventStack | None = None
    #: the target's module files came with the arguments (from a /proc context): the worker
    #: need not list them out of the core
    modules_known: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "core_fd": self.core_fd,
            "firing_tid": self.firing_tid,
            "exe": self.exe,
            "search": list(self.search),
            "limits": self.limits.to_dict(),
            "threads": {str(k): list(v) for k, v in self.threads.items()},
            "event": self.event.to_dict() if self.event else None,
            "modules_known": self.modules_known,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportRequest:
        ev = d.get("event")
        return cls(
            core_fd=int(d["core_fd"]),
            firing_tid=d.get("firing_tid"),
            exe=d.get("exe"),
            search=tuple(d.get("search", ())),
            limits=ReportLimits(**d.get("limits", {})),
            threads={int(k): (str(v[0]), str(v[1])) for k, v in d.get("threads", {}).items()},
            event=EventStack.from_dict(ev) if ev else None,
            modules_known=bool(d.get("modules_known")),
        )
