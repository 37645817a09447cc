"""Diffing two /proc contexts (what :func:`snapd.procfs.context.capture` returns) of one process.

Contexts come from the catalog as JSON; they were read from a process that may have named its
files anything, and a catalog row may have been edited: every field is checked for its type,
anything else is skipped, never trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from snapd.diff.errors import DifferentProcesses, DiffError
from snapd.diff.model import ContextDiff

#: /proc/PID/status fields (kB, or counts) worth a line when they change (proc(5)).
STATUS_FIELDS = (
    "VmRSS",
    "VmHWM",
    "VmSize",
    "RssAnon",
    "RssFile",
    "RssShmem",
    "VmSwap",
    "Threads",
    "voluntary_ctxt_switches",
    "nonvoluntary_ctxt_switches",
)


def _fds(ctx: Mapping[str, Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    fds = ctx.get("fds")
    if not isinstance(fds, list):
        return out
    for item in fds:
        if isinstance(item, dict) and isinstance(item.get("fd"), int) and isinstance(item.get("target"), str):
            out[item["fd"]] = item["target"]
    return out


def _limits(ctx: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    limits = ctx.get("limits")
    if not isinstance(limits, list):
        return out
    for item in limits:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            out[item["name"]] = {k: str(item.get(k, "")) for k in ("soft", "hard", "units")}
    return out


def _status_number(ctx: Mapping[str, Any], key: str) -> int | None:
    status = ctx.get("status")
    if not isinstance(status, dict):
        return None
    value = status.get(key)
    if not isinstance(value, str):
        return None
    head = value.split()[0] if value.split() else ""
    return int(head) if head.isdigit() else None


def _threads(ctx: Mapping[str, Any]) -> int | None:
    total = ctx.get("threads_total")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    threads = ctx.get("threads")
    return len(threads) if isinstance(threads, list) else None


def check_same(ctx_a: Mapping[str, Any], ctx_b: Mapping[str, Any]) -> None:
    pid_a, pid_b = ctx_a.get("pid"), ctx_b.get("pid")
    if isinstance(pid_a, int) and isinstance(pid_b, int) and pid_a != pid_b:
        raise DifferentProcesses(
            "context A", "context B", f"pid {pid_a} and pid {pid_b}", "diff two contexts of the same process"
        )


def diff_context(ctx_a: Mapping[str, Any], ctx_b: Mapping[str, Any]) -> ContextDiff:
    """fds opened and closed (an fd number whose target changed is both), limits whose soft or
    hard value changed, the cgroup if it moved, and the memory and thread counts of status."""
    if not isinstance(ctx_a, Mapping) or not isinstance(ctx_b, Mapping):
        raise DiffError("a context is not a JSON object")
    check_same(ctx_a, ctx_b)
    out = ContextDiff()
    fa, fb = _fds(ctx_a), _fds(ctx_b)
    out.fds_a = _count(ctx_a, "fds_total", len(fa))
    out.fds_b = _count(ctx_b, "fds_total", len(fb))
    for fd in sorted(fb):
        if fa.get(fd) != fb[fd]:
            out.opened.append({"fd": fd, "target": fb[fd]})
    for fd in sorted(fa):
        if fb.get(fd) != fa[fd]:
            out.closed.append({"fd": fd, "target": fa[fd]})
    la, lb = _limits(ctx_a), _limits(ctx_b)
    for name in sorted(set(la) & set(lb)):
        if (la[name]["soft"], la[name]["hard"]) != (lb[name]["soft"], lb[name]["hard"]):
            out.limits.append({"name": name, "a": la[name], "b": lb[name]})
    cg_a, cg_b = ctx_a.get("cgroup"), ctx_b.get("cgroup")
    if isinstance(cg_a, str) and isinstance(cg_b, str) and cg_a != cg_b:
        out.cgroup = {"a": cg_a, "b": cg_b}
    for key in STATUS_FIELDS:
        va, vb = _status_number(ctx_a, key), _status_number(ctx_b, key)
        if va is not None and vb is not None and va != vb:
            out.status[key] = {"a": va, "b": vb, "delta": vb - va}
    out.threads_a, out.threads_b = _threads(ctx_a), _threads(ctx_b)
    for name, ctx in (("a", ctx_a), ("b", ctx_b)):
        errors = ctx.get("errors")
        if isinstance(errors, dict) and "fds" in errors:
            out.incomplete.append(f"{name}: fds unreadable")
        total = ctx.get("fds_total")
        listed = len(_fds(ctx))
        if isinstance(total, int) and total > listed:
            out.incomplete.append(f"{name}: {listed} of {total} fds recorded")
    return out


def _count(ctx: Mapping[str, Any], key: str, default: int) -> int:
    v = ctx.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else default
