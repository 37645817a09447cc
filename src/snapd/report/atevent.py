"""The firing thread's frames at the event: its recorded registers and stack, unwound by drgn in
a core derived from the snapshot (:func:`snapd.report.derived.event_core`).

The derived core goes to a memfd (no file system write), which drgn reads like any core.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import BinaryIO

import drgn

from snapd.report import native
from snapd.report.corefile import CoreNotes
from snapd.report.derived import event_core
from snapd.report.model import AtEvent, EventStack, clip

NEAR_TOP = 512  # bytes: a frame this close to the end of the copy had callers beyond it
#: where every thread's stack begins: an unwind that reached one of these is complete
THREAD_ROOTS = frozenset({"_start", "__clone3", "__clone", "clone3", "clone", "__GI___clone3"})


def unwind(
    notes: CoreNotes,
    f: BinaryIO,
    ev: EventStack,
    limit: int,
    search: Iterable[str] = (),
    like: drgn.Program | None = None,
) -> AtEvent:
    """Frames at the event, innermost first; never raises for what the data holds. ``like``:
    the snapshot's program, whose modules (and their files) the event's stack is read with."""
    try:
        image = event_core(notes, f, ev)
    except (OSError, ValueError) as err:
        return AtEvent(error=clip(f"cannot derive the event's core: {err}"))
    fd = os.memfd_create("snapd-event-core", os.MFD_CLOEXEC)
    try:
        view = memoryview(image)
        while view:
            view = view[os.write(fd, view) :]
        try:
            prog = native.open_core(fd, search, like).prog
            trace = prog.thread(ev.tid).stack_trace()
            frames, truncated = native.frames_of(prog, trace, limit)
            outer_sp = _outer_sp(trace)
        except native.DRGN_ERRORS as err:
            return AtEvent(error=clip(f"cannot unwind the event's stack: {err}"))
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if not frames:
        return AtEvent(error="no frame could be read from the event's registers")
    # The unwinder stops where the recorded bytes end: the stack went on above them when the
    # outermost frame it found lies in the last bytes recorded.
    top = ev.sp + len(ev.stack)
    rooted = frames[-1].function in THREAD_ROOTS
    if not rooted and outer_sp is not None and outer_sp + NEAR_TOP >= top:
        truncated = True
    return AtEvent(frames=frames, truncated=truncated)


def _outer_sp(trace: object) -> int | None:
    sp = None
    for f in trace:  # type: ignore[attr-defined]
        with contextlib.suppress(*native.DRGN_ERRORS):
            sp = int(f.sp)
    return sp
