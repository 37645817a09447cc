"""The caller's side: a report computed in a sandboxed worker, whatever the core holds.

    report = run_report("/var/lib/snapd-cores/cores/core.nginx.1234", firing_tid=1240)
    report["error"]   # None, or why it failed ("timed out after 30 s (killed)", ...)

The core is opened here (the caller may be root and the core 0600) and handed to the worker as
an inherited fd; the worker runs as nobody with CAP_DAC_READ_SEARCH only where Landlock confines
its reads (pystack reopens the core by /proc/self/fd path), cannot write anything by path, and
is killed at the deadline. Where the caller has no /proc context naming the target's modules,
the worker lists them out of the core in a confined child (:mod:`snapd.report.mapped`) before
it locks itself down. For an event loop, :func:`start_report` returns a :class:`ReportJob`
to poll (``fileno()``, ``step(0)``) instead of waiting.
"""

from __future__ import annotations

import math
import os
import pwd
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, ParamSpec

from snapd.report import files
from snapd.report.model import MAX_DERIVED, EventStack, MalformedReport, Report, ReportLimits
from snapd.report.request import ReportRequest
from snapd.sandbox import SYSTEM_READ, BoundedRun, Failure, Limits, Result, code_paths

WORKER = "snapd.report.build"
DEBUGINFOD_CACHE = "/var/cache/snapd-cores/debuginfod"
SLACK = 2 << 20

P = ParamSpec("P")


def _debuginfod(env: dict[str, str]) -> tuple[str, ...]:
    """With DEBUGINFOD_URLS set, the worker fetches debug info: it needs a cache it may write."""
    if not os.environ.get("DEBUGINFOD_URLS"):
        return ()
    cache = os.environ.get("DEBUGINFOD_CACHE_PATH")
    if os.geteuid() == 0:
        cache = cache or DEBUGINFOD_CACHE
        try:
            os.makedirs(cache, mode=0o700, exist_ok=True)
            nobody = pwd.getpwnam(Limits().user)
            os.chown(cache, nobody.pw_uid, nobody.pw_gid)
        except (OSError, KeyError):
            return ()
    else:
        cache = cache or os.path.expanduser("~/.cache/debuginfod_client")
        os.makedirs(cache, mode=0o700, exist_ok=True)
    env["DEBUGINFOD_CACHE_PATH"] = cache
    return (cache,)


def sandbox_limits(limits: ReportLimits, req: ReportRequest, env: dict[str, str]) -> Limits:
    """The report worker's limits. Besides what they allow, it may read the core (its fd), what
    the caller names (``exe``, ``search``) and the target's ELF modules (sent with the args)."""
    cache = _debuginfod(env)
    # drgn indexes debug info with OpenMP threads: one for a background report, a few for one
    # an operator waits for
    env["OMP_NUM_THREADS"] = "1" if limits.nice > 0 else str(min(os.cpu_count() or 1, 4))
    return Limits(
        deadline=limits.deadline,
        cpu_seconds=max(1, math.ceil(limits.deadline)),
        address_space=limits.memory,
        file_size=(MAX_DERIVED + SLACK if req.event else 0) + ((4 << 30) if cache else 0),
        nice=limits.nice,
        idle_io=limits.idle_io,
        keep_read_cap=True,
        read_paths=(*SYSTEM_READ, *code_paths()),
        write_paths=cache,
        network=bool(cache),
    )


def _context_threads(context: Mapping[str, Any] | None) -> dict[int, tuple[str, str]]:
    out: dict[int, tuple[str, str]] = {}
    for t in (context or {}).get("threads", []) or []:
        if isinstance(t, dict) and isinstance(t.get("tid"), int):
            out[t["tid"]] = (str(t.get("comm", "")), str(t.get("state", "")))
    return out


class ReportJob:
    """A report being computed; ``step(timeout)`` returns the report dict once it is done."""

    def __init__(
        self, req: ReportRequest, context: Mapping[str, Any] | None, failed: str | None = None
    ) -> None:
        self.req = req
        self.started = time.monotonic()
        self._fd = req.core_fd
        self._report: dict[str, Any] | None = None
        self._run: BoundedRun | None = None
        if failed is not None:
            self._fail(failed)
            return
        maps = (context or {}).get("maps")
        reads: list[str] = []
        if isinstance(maps, list) and maps:  # trusted: read from /proc by the daemon
            reads = files.elf_files(files.from_maps(str(m) for m in maps))
            self.req = replace(req, modules_known=True)
        env: dict[str, str] = {}
        try:
            lim = sandbox_limits(req.limits, req, env)
            self._run = BoundedRun(WORKER, self.req.to_dict(), lim, fds=[req.core_fd], env=env, reads=reads)
        except OSError as err:
            self._fail(f"cannot start the report worker: {err.strerror or err}")

    def _fail(self, why: str) -> None:
        self._report = Report.failed(why, time.monotonic() - self.started).to_dict()
        self._close()

    def fileno(self) -> int:
        """Readable when :meth:`step` has something to do (-1 once done)."""
        return self._run.fileno() if self._run is not None and self._report is None else -1

    def step(self, timeout: float | None = None) -> dict[str, Any] | None:
        if self._report is not None:
            return self._report
        assert self._run is not None
        res = self._run.step(timeout)
        if res is None:
            return None
        self._done(res)
        return self._report

    def _done(self, res: Result | Failure) -> None:
        elapsed = time.monotonic() - self.started
        if isinstance(res, Failure):
            self._fail(res.why)
            return
        try:
            rep = Report.from_dict(res.value)
        except (MalformedReport, TypeError, ValueError) as err:
            rep = Report.failed(f"the worker's report is malformed: {err}")
        rep.sandbox = res.sandbox
        rep.elapsed = elapsed
        self._report = rep.to_dict()
        self._report["max_rss"] = res.max_rss
        self._close()

    def wait(self) -> dict[str, Any]:
        while True:
            rep = self.step()
            if rep is not None:
                return rep

    def kill(self) -> None:
        """Stop the worker now (idempotent); the report becomes a failure if not done."""
        if self._run is not None:
            self._run.kill()
        if self._report is None:
            self._fail("cancelled")
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def start_report(
    core_path: str,
    firing_tid: int | None = None,
    exe: str | None = None,
    limits: ReportLimits | None = None,
    context: Mapping[str, Any] | None = None,
    event: EventStack | None = None,
    search: Iterable[str] = (),
) -> ReportJob:
    """Start the workers on ``core_path``; never raises for what the core holds."""
    limits = limits or ReportLimits()
    why = None
    try:
        fd = os.open(core_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as err:
        fd = -1
        why = f"{core_path}: {err.strerror or err}"
    req = ReportRequest(
        core_fd=fd,
        firing_tid=firing_tid,
        exe=exe,
        search=tuple(search),
        limits=limits,
        threads=_context_threads(context),
        event=event,
    )
    return ReportJob(req, context, why)


def _waited(start: Callable[P, ReportJob]) -> Callable[P, dict[str, Any]]:
    """``start`` and a wait for its end, taking the same arguments (checked by mypy)."""

    def run(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        """The report of ``core_path`` as a dict (see :mod:`snapd.report.model`), within the
        deadline; a report that fails is ``{"error": "why", "threads": [], ...}``. Arguments as
        for :func:`start_report`; the worker is killed if the wait is cut short (an exception
        in the caller's thread, KeyboardInterrupt)."""
        job = start(*args, **kwargs)
        try:
            return job.wait()
        except BaseException:
            job.kill()
            raise

    run.__name__ = run.__qualname__ = "run_report"
    return run


run_report = _waited(start_report)
