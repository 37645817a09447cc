"""A diff or a series computed in a bounded, confined subprocess: the daemon's ``ctl diff`` and
``ctl series`` (core files are hostile input; the daemon never parses them itself).

The caller opens the cores and passes their fds; this side reads through them only (it runs as
nobody, under Landlock, and may open nothing of the store by path). Arguments::

    {"mode": "diff" | "series", "top": N, "workers": N,
     "cores": [{"fd": N, "path": "...", "id": N, "context": {...} | null, "report": {...} | null}]}

The answer: ``{"diff": Diff.to_dict(), "text": ...}``, ``{"series": Series.to_dict(), "text":
...}``, or ``{"refused": "one line"}`` for cores that cannot be compared (different processes,
not a core): a refusal is the answer, not a failure of the worker.

:func:`slim` cuts what a diff does not read out of a catalog context and a stack report, so
that what goes to the worker stays small.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from snapd.diff import render
from snapd.diff.cores import DEFAULT_TOP, diff_cores
from snapd.diff.errors import DiffError
from snapd.diff.series import series
from snapd.diff.stacks import TOP_FRAMES
from snapd.sandbox.limits import Limits

MODULE = "snapd.diff.worker"


def slim_context(ctx: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A /proc context without what a diff ignores (the maps, the threads' kernel stacks)."""
    if not isinstance(ctx, Mapping):
        return None
    out = {k: v for k, v in ctx.items() if k != "maps"}
    threads = out.get("threads")
    if isinstance(threads, list):
        out["threads"] = [
            {k: v for k, v in t.items() if k != "kernel_stack"} if isinstance(t, dict) else t for t in threads
        ]
    return out


def slim_report(rep: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stack report with each thread's innermost frames only (what snapd.diff.stacks reads)."""
    if not isinstance(rep, Mapping) or rep.get("error") or not isinstance(rep.get("threads"), list):
        return None
    threads = []
    for t in rep["threads"]:
        if isinstance(t, dict):
            frames = t.get("frames")
            top = frames[:TOP_FRAMES] if isinstance(frames, list) else []
            threads.append({"tid": t.get("tid"), "frames": top})
    return {"threads": threads}


def sandbox_reads(args: dict[str, Any], limits: Limits) -> list[str | int]:
    return []  # everything is read through the fds the caller passed


def sandboxed(args: dict[str, Any]) -> dict[str, Any]:
    cores = args["cores"]
    workers = int(args.get("workers") or 1)
    try:
        if args.get("mode") == "series":
            s = series(cores, workers=workers)
            return {"series": s.to_dict(), "text": s.text()}
        a, b = cores
        ctx_a, ctx_b = a.get("context"), b.get("context")
        d = diff_cores(
            a["path"],
            b["path"],
            top=int(args.get("top", DEFAULT_TOP)),
            context=(ctx_a, ctx_b) if ctx_a is not None and ctx_b is not None else None,
            reports=(a.get("report"), b.get("report")),
            workers=workers,
            fds=(int(a["fd"]), int(b["fd"])),
        )
    except DiffError as err:
        return {"refused": str(err)}
    return {"diff": d.to_dict(), "text": render.text(d)}
