"""The `every` timers: one cpu-clock perf event per period, shared by the rules of that period
(the ``ticks`` map: period -> bitmask of rule slots), opened with the first rule and closed
with the last."""

from __future__ import annotations

import ctypes as ct
from collections import Counter
from typing import Any

from snapd.probe import perfevents


class Ticks:
    def __init__(self) -> None:
        self._fds: dict[int, int] = {}
        self._refs: Counter[int] = Counter()

    def add(self, bpf: Any, period: int, slot: int) -> None:
        """Rule ``slot`` ticks every ``period`` ns; OSError when the perf event cannot open."""
        ticks = bpf[b"ticks"]
        pkey = ct.c_uint64(period)
        cur = ticks.get(pkey)
        ticks[pkey] = ct.c_uint64((cur.value if cur is not None else 0) | (1 << slot))
        self._refs[period] += 1
        if period not in self._fds:
            self._fds[period] = perfevents.open_tick(bpf, period)

    def remove(self, bpf: Any, period: int, slot: int) -> None:
        if self._refs[period] <= 0:
            return
        self._refs[period] -= 1
        ticks = bpf[b"ticks"]
        pkey = ct.c_uint64(period)
        cur = ticks.get(pkey)
        rest = (cur.value if cur is not None else 0) & ~(1 << slot)
        if rest:
            ticks[pkey] = ct.c_uint64(rest)
        elif cur is not None:
            del ticks[pkey]
        if not self._refs[period]:
            del self._refs[period]
            fd = self._fds.pop(period, None)
            if fd is not None:
                perfevents.close_tick(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            perfevents.close_tick(fd)
        self._fds.clear()
        self._refs.clear()
