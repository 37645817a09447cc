"""CoreRequest: one core to take, the record that flows from a firing to the core writer.

Built by admission from an :class:`~snapd.probe.Event` and its rule (or by ``ctl snap``),
reserved in the catalog, carried by the worker's :class:`~snapd.daemon.worker.Job` to
:func:`~snapd.core.write_core`. Typed all the way: the content spec and the snapshot mode are
turned into text only where the catalog records them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from snapd.content import ContentSpec, SnapshotMode
from snapd.probe import Event
from snapd.rules.model import Rule


@dataclass(frozen=True)
class CoreRequest:
    rule: str
    pid: int
    tid: int | None  # the thread that fired: the core's first ("current") thread
    trigger: Mapping[str, object]  # what fired, as the catalog records it
    content: ContentSpec
    mode: SnapshotMode
    template: str  # the core's name (snapd.template)
    kernel_stopped: bool = False  # the probe SIGSTOPped the target (stop: kernel)

    @classmethod
    def from_event(cls, rule: Rule, ev: Event) -> CoreRequest:
        core = rule.action.core
        return cls(
            rule=rule.name,
            pid=ev.pid,
            tid=ev.tid,
            trigger=trigger_record(ev),
            content=core.content,
            mode=rule.action.snapshot,
            template=core.name,
            kernel_stopped=ev.stopped,
        )

    def repeated(self) -> CoreRequest:
        """The same request for a repeat core: taken later, the target no longer stopped."""
        return dataclasses.replace(self, kernel_stopped=False)


def trigger_record(ev: Event) -> dict[str, object]:
    return {
        "kind": ev.kind.value,
        "syscall": ev.syscall,
        "args": list(ev.args),
        "ret": ev.ret,
        "value": ev.value,
        "tid": ev.tid,
    }
