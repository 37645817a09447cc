"""Pairing the mappings of core A with those of core B.

A mapping is matched by its start address and backing file first. Anonymous mappings also grow
and shrink at their start: a new mmap placed just below an existing one with the same flags is
merged into it (mm/vma.c, vma_merge_new_range), so the merged mapping keeps the old end. Then by
end address and file, then by overlap with the same file. What is left is added or removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from snapd.diff.corefile import Load

#: Overlap candidates looked at per mapping: bounds the work on hostile, overlapping segments.
_SCAN = 16


class Status(str, Enum):
    ADDED = "added"
    REMOVED = "removed"
    GROWN = "grown"
    SHRUNK = "shrunk"
    SAME = "same"


Pair = tuple[Load | None, Load | None]


def status(a: Load | None, b: Load | None) -> Status:
    if a is None:
        return Status.ADDED
    if b is None:
        return Status.REMOVED
    sa, sb = a.end - a.start, b.end - b.start
    return Status.GROWN if sb > sa else Status.SHRUNK if sb < sa else Status.SAME


def _by_start(ld: Load) -> tuple[int, str]:
    return ld.start, ld.file


def _by_end(ld: Load) -> tuple[int, str]:
    return ld.end, ld.file


def match(loads_a: Sequence[Load], loads_b: Sequence[Load]) -> list[Pair]:
    """Every load of A and of B exactly once, paired where they are the same mapping, in
    address order."""
    pairs: list[Pair] = []
    left_a = list(loads_a)
    left_b = list(loads_b)
    for key in (_by_start, _by_end):
        index: dict[tuple[int, str], Load] = {}
        for ld in left_b:
            index.setdefault(key(ld), ld)
        rest = []
        taken: set[int] = set()
        for a in left_a:
            b = index.get(key(a))
            if b is not None and b.index not in taken:
                taken.add(b.index)
                pairs.append((a, b))
            else:
                rest.append(a)
        left_a = rest
        left_b = [b for b in left_b if b.index not in taken]
    pairs += _by_overlap(left_a, left_b)
    pairs.sort(key=lambda p: (p[1] or p[0]).start)  # type: ignore[union-attr]
    return pairs


def _by_overlap(left_a: list[Load], left_b: list[Load]) -> list[Pair]:
    left_a.sort(key=lambda ld: ld.start)
    left_b.sort(key=lambda ld: ld.start)
    taken: set[int] = set()
    out: list[Pair] = []
    j = 0
    for a in left_a:
        while j < len(left_b) and left_b[j].end <= a.start:
            j += 1
        found = None
        for b in left_b[j : j + _SCAN]:
            if b.start >= a.end:
                break
            if b.index not in taken and b.file == a.file:
                found = b
                break
        if found is not None:
            taken.add(found.index)
        out.append((a, found))
    out += [(None, b) for b in left_b if b.index not in taken]
    return out
