"""A diff as text: the one-line summary first, then the tables. Every name from the target
(comm, file names, fd targets) goes through :func:`snapd.text.safe`."""

from __future__ import annotations

import time

from snapd.diff.model import ContextDiff, CoreSide, Diff, MappingDelta, size_text
from snapd.text import safe


def when(t: float) -> str:
    if not t:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _side(name: str, s: CoreSide) -> str:
    src = "" if s.time_source == "snapd" else f" ({s.time_source})"
    extra = ", truncated" if s.truncated else ""
    return (
        f"core {name}: {safe(s.path)}: pid {s.pid} ({safe(s.comm)}), {s.threads} thread(s), "
        f"{size_text(s.resident)} resident, {when(s.time)}{src}{extra}"
    )


def _ids(tids: list[int], limit: int = 16) -> str:
    if not tids:
        return "-"
    more = f" (+{len(tids) - limit} more)" if len(tids) > limit else ""
    return " ".join(map(str, tids[:limit])) + more


def _mapping_row(m: MappingDelta) -> str:
    changed = "-" if m.status in ("added", "removed") else str(m.changed_pages)
    return (
        f"  {m.start:012x}-{m.end:012x} {m.perms:<4} {safe(m.cls):<7} {m.status:<7} "
        f"{size_text(m.resident_a):>10} {size_text(m.resident_b):>10} "
        f"{size_text(m.resident_delta, signed=True):>11} {changed:>8}  {safe(m.file)}"
    )


def _context(c: ContextDiff) -> list[str]:
    out = [f"fds: {c.fds_a} -> {c.fds_b}"]
    for verb, items in (("opened", c.opened), ("closed", c.closed)):
        for f in items[:32]:
            out.append(f"  {verb} {f['fd']:>5} {safe(f['target'])}")
        if len(items) > 32:
            out.append(f"  ... {len(items) - 32} more {verb}")
    for lim in c.limits:
        a, b = lim["a"], lim["b"]
        out.append(
            f"limit {safe(lim['name'])}: soft {safe(a['soft'])} -> {safe(b['soft'])}, "
            f"hard {safe(a['hard'])} -> {safe(b['hard'])}"
        )
    if c.cgroup:
        out.append(f"cgroup: {safe(c.cgroup['a'])} -> {safe(c.cgroup['b'])}")
    if c.status:
        out.append(
            "status: " + ", ".join(f"{k} {v['a']} -> {v['b']} ({v['delta']:+d})" for k, v in c.status.items())
        )
    out += [f"note: context {safe(x)}" for x in c.incomplete]
    return out


def text(d: Diff) -> str:
    out = [_side("A", d.a), _side("B", d.b)]
    if d.a.time and d.b.time:
        out[-1] += f" ({d.b.time - d.a.time:+.1f} s)"
    out += [f"summary: {d.summary()}", ""]
    out.append(f"  {'CLASS':<8} {'A':>10} {'B':>10} {'DELTA':>11}")
    for c in d.by_class:
        if not (c.a or c.b):
            continue  # a class of mappings that neither core holds data of (text, often)
        out.append(
            f"  {safe(c.cls):<8} {size_text(c.a):>10} {size_text(c.b):>10} "
            f"{size_text(c.delta, signed=True):>11}"
        )
    out.append(
        f"  {'total':<8} {size_text(d.a.resident):>10} {size_text(d.b.resident):>10} "
        f"{size_text(d.resident_delta, signed=True):>11}"
    )
    out.append("")
    shown = len(d.mappings)
    head = f"mappings: {d.mappings_changed} of {d.mappings_total} changed"
    if shown < d.mappings_changed:
        head += f", the {shown} largest shown (--top)"
    out.append(head + f"; {d.changed_pages} pages changed in all")
    if d.mappings:
        out.append(
            f"  {'RANGE':<25} {'PERM':<4} {'CLASS':<7} {'STATUS':<7} {'RES A':>10} {'RES B':>10} "
            f"{'DELTA':>11} {'CHANGED':>8}  FILE"
        )
        out += [_mapping_row(m) for m in d.mappings]
    out.append("")
    t = d.threads
    line = f"threads: {t.a} -> {t.b}; added: {_ids(t.added)}; removed: {_ids(t.removed)}"
    if t.compared_stacks:
        line += f"; top frames changed: {_ids(t.changed)}"
    out.append(line)
    if d.context is not None:
        out += _context(d.context)
    out += [f"warning: {safe(w)}" for w in d.warnings]
    s = d.stats
    out.append(f"compared {size_text(s.compared_bytes)} in {s.seconds:.3f} s ({s.gbps:.2f} GB/s)")
    return "\n".join(out)
