"""The ``targets`` map (tgid -> bitmask of rule slots) as Probes reads and writes it: the
kernel's exec and fork probes keep it current for new processes, rescans add existing ones."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable, Iterable
from typing import Any

from snapd import procfs
from snapd.errors import SnapdError


def is_process(pid: int) -> bool:
    """Whether ``pid`` is a live process (a thread group leader), not a thread."""
    try:
        return int(procfs.status(pid)["Tgid"]) == pid
    except (SnapdError, KeyError, ValueError):
        return False


def mark(tmap: Any, pids: Iterable[int], slot: int) -> None:
    """Give each of ``pids`` rule ``slot``'s bit."""
    bit = 1 << slot
    for pid in pids:
        key = ct.c_uint32(pid)
        cur = tmap.get(key)
        old = cur.value if cur is not None else 0
        if not old & bit:
            tmap[key] = ct.c_uint64(old | bit)


def clear(tmap: Any, slot: int) -> None:
    """Take rule ``slot``'s bit from every entry (dropping entries left with none)."""
    bit = 1 << slot
    for k, v in list(tmap.items()):
        if v.value & bit:
            rest = v.value & ~bit
            try:
                if rest:
                    tmap[k] = ct.c_uint64(rest)
                else:
                    del tmap[k]
            except KeyError:
                pass


def pids_of(tmap: Any, slot: int, is_own: Callable[[int], bool]) -> list[int]:
    """The live processes that have rule ``slot``'s bit, leaving out snapd's own."""
    return by_slot(tmap, is_own, 1 << slot).get(slot, [])


def by_slot(tmap: Any, is_own: Callable[[int], bool], mask: int = ~0) -> dict[int, list[int]]:
    """Each rule slot of ``mask`` that has live processes (snapd's own left out): their pids,
    in one pass over the map."""
    out: dict[int, list[int]] = {}
    for k, v in tmap.items():
        pid, bits = int(k.value), v.value & mask
        # fork also marks new threads (by tid); an Event names a process
        if not bits or not is_process(pid) or is_own(pid):
            continue
        for slot in range(bits.bit_length()):
            if bits >> slot & 1:
                out.setdefault(slot, []).append(pid)
    return {slot: sorted(pids) for slot, pids in out.items()}
