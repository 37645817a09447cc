"""The report of one core, computed in the sandboxed worker (``sandboxed(args)``).

:func:`build_report` may also be called in-process (tests, benchmarks), but the core's memory is
hostile input: the daemon and ``snapd inspect`` call :func:`snapd.report.run.run_report`, which
runs this module through :func:`snapd.sandbox.run_bounded`.
"""

from __future__ import annotations

import os
from typing import Any

from snapd.errors import SnapdError
from snapd.report import atevent, files, mapped, native
from snapd.report.corefile import BadCore, CoreNotes, read_notes
from snapd.report.model import Report, ThreadStack, clip
from snapd.report.request import ReportRequest
from snapd.sandbox.limits import Limits


def sandbox_reads(args: dict[str, Any], limits: Limits) -> list[str | int]:
    """What the worker must be able to open by path: the core (through its fd), the binaries
    named by the caller, and the target's ELF modules (from the caller's /proc context, or
    listed out of the core by a confined child when the caller sent none)."""
    req = ReportRequest.from_dict(args)
    reads: list[str | int] = [req.core_fd, *req.search]
    if req.exe:
        reads += [req.exe, os.path.dirname(req.exe)]
    if not req.modules_known:
        found, why = mapped.confined_listing(req.core_fd, limits, limits.deadline / 3)
        reads += files.elf_files(found)
        if why:  # the report says so (its modules outside the system trees go unread)
            args["listing_error"] = why
    return reads


def sandboxed(args: dict[str, Any]) -> dict[str, Any]:
    report = build_report(ReportRequest.from_dict(args))
    if args.get("listing_error"):
        report.warnings.append(clip(f"the core's file list could not be read: {args['listing_error']}"))
    return report.to_dict()


def build_report(req: ReportRequest) -> Report:
    """The report; a core that cannot be read at all gives a report whose ``error`` says why."""
    with os.fdopen(os.dup(req.core_fd), "rb") as f:
        try:
            notes = read_notes(f)
        except BadCore as err:
            return Report.failed(str(err))
        try:
            nat = native.open_core(req.core_fd, req.search)
        except (*native.DRGN_ERRORS, SnapdError) as err:
            return Report.failed(clip(f"drgn cannot read the core: {err}"), 0.0)
        report = Report(pid=notes.pid, comm=notes.comm, warnings=list(nat.warnings))
        _threads(report, nat, notes, req)
        report.modules, more = native.modules(nat.prog, req.limits.max_modules)
        report.truncated |= more
        if req.limits.python and native.is_cpython(nat.prog):
            _python(report, nat, req)
        if req.event is not None:
            _at_event(report, notes, f, req, nat)
    report.truncated |= any(t.truncated for t in report.threads)
    return report


def _order(notes: CoreNotes, nat: native.Native, firing: int | None) -> list[int]:
    tids = list(notes.tids)
    if not tids:  # a core without NT_PRSTATUS our reader could see: take drgn's
        tids = sorted(t.tid for t in nat.prog.threads())
    if firing in tids:
        tids.remove(firing)
        tids.insert(0, firing)
    return tids


def _threads(report: Report, nat: native.Native, notes: CoreNotes, req: ReportRequest) -> None:
    lim = req.limits
    tids = _order(notes, nat, req.firing_tid)
    report.threads_total = len(tids)
    if req.firing_tid is not None and req.firing_tid not in tids:
        report.threads.append(
            ThreadStack(
                tid=req.firing_tid, firing=True, error="not in the core (it exited before the snapshot)"
            )
        )
    for tid in tids[: lim.max_threads]:
        comm, state = req.threads.get(tid, (None, None))
        if tid == notes.pid:
            comm, state = comm or notes.comm, state or notes.state
        t = ThreadStack(tid=tid, name=comm, state=state, firing=tid == req.firing_tid)
        try:
            t.frames, t.truncated = native.frames(nat.prog, nat.prog.thread(tid), lim.max_frames)
        except native.DRGN_ERRORS as err:
            t.error = clip(f"cannot unwind: {err}")
        report.threads.append(t)
    report.truncated |= len(tids) > lim.max_threads


def _python(report: Report, nat: native.Native, req: ReportRequest) -> None:
    from snapd.report import python

    exe = req.exe or native.main_file(nat.prog)
    if not exe:
        report.warnings.append("python stacks: the interpreter's executable was not found (give --exe)")
        return
    dirs = [p for p in req.search if os.path.isdir(p)]
    try:
        py = python.stacks(
            f"/proc/self/fd/{req.core_fd}", exe, dirs[0] if dirs else None, req.limits.max_python_frames
        )
    except MemoryError:
        raise
    except Exception as err:  # pystack raises its own types (and RuntimeError) on bad memory
        report.warnings.append(clip(f"python stacks: {type(err).__name__}: {err}"))
        return
    report.python_version = py.version
    for t in report.threads:
        s = py.threads.get(t.tid)
        if s is not None:
            t.python, t.gil = s.frames, s.gil
            t.truncated |= s.truncated
    holders = [tid for tid, s in py.threads.items() if s.gil]
    report.gil = holders[0] if holders else None


def _at_event(report: Report, notes: CoreNotes, f: Any, req: ReportRequest, nat: native.Native) -> None:
    ev = req.event
    assert ev is not None
    frames = atevent.unwind(notes, f, ev, req.limits.max_frames, req.search, like=nat.prog)
    for t in report.threads:
        if t.tid == ev.tid:
            t.at_event = frames
            return
    report.threads.insert(0, ThreadStack(tid=ev.tid, firing=True, at_event=frames, error="not in the core"))
