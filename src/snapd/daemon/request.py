"""CoreRequest: one core to take, the record that flows from a firing to the core writer.

Built by admission from an :class:`~snapd.probe.Event` and its rule (or by ``ctl snap``),
reserved in the catalog, carried by the worker's :class:`~snapd.daemon.worker.Job` to
:func:`~snapd.core.write_core`. Typed all the way: the content spec and the snapshot mode are
turned into text only where the catalog records them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from snapd.content import ContentSpec, SnapshotMode
from snapd.probe import Event
from snapd.report import EventStack
from snapd.report.model import EventError
from snapd.rules.model import Rule

log = logging.getLogger("snapd")


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
    #: the firing thread at the event (registers, top of stack), for the report's "at the
    #: event" frames; None when the probe recorded none, and for repeat cores (taken later)
    event: EventStack | None = None
    #: the catalog id of the first core of this firing, for its repeat cores (a series)
    firing: int | None = None

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
            event=event_stack(ev),
        )

    def repeated(self) -> CoreRequest:
        """The same request for a repeat core: taken later, the target no longer stopped."""
        return dataclasses.replace(self, kernel_stopped=False, event=None)


def event_stack(ev: Event) -> EventStack | None:
    """The report's record of what the probe saw of the firing thread, if it saw anything."""
    if ev.stack is None:
        return None
    try:
        return EventStack(ev.tid, ev.stack.regs, ev.stack.stack)
    except EventError as err:
        log.warning("rule %s: pid %d: the event's stack is unusable: %s", ev.rule, ev.pid, err)
        return None


def trigger_record(ev: Event) -> dict[str, object]:
    return {
        "kind": ev.kind.value,
        "syscall": ev.syscall,
        "probe": ev.probe,
        "args": list(ev.args),
        "ret": ev.ret,
        "value": ev.value,
        "tid": ev.tid,
        **({"sender": ev.sender.to_dict()} if ev.sender is not None else {}),
    }
