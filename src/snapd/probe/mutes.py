"""Mutes: a rule whose events are useless (its budget spent, its interval running for a
process) costs a map lookup per hit in the kernel, not an event. The maps are probe.bpf.c's
``mutes`` (per rule), ``pmutes`` (per rule and process) and ``pmute_max`` (the latest end of a
rule's per-process mutes, so that the program skips ``pmutes``, a hash, when none can run)."""

from __future__ import annotations

import ctypes as ct
from typing import Any


def reset(bpf: Any, slot: int) -> None:
    """A reused slot starts unmuted: its previous rule's budget is not this one's."""
    for table in (b"mutes", b"pmute_max"):
        bpf[table][ct.c_int(slot)] = ct.c_uint64(0)


def mute(bpf: Any, slot: int, until_ns: int | None) -> None:
    """Mute rule ``slot`` until CLOCK_MONOTONIC ``until_ns``; None unmutes it."""
    bpf[b"mutes"][ct.c_int(slot)] = ct.c_uint64(until_ns or 0)


def mute_process(bpf: Any, slot: int, gen: int, pid: int, until_ns: int) -> None:
    """Mute rule ``slot`` (of generation ``gen``) for process ``pid`` until ``until_ns``."""
    t = bpf[b"pmutes"]
    t[t.Key(slot=slot, tgid=pid)] = t.Leaf(until=until_ns, gen=gen)
    # after the row, so that the program never sees pmute_max let it skip a row that exists
    latest, key = bpf[b"pmute_max"], ct.c_int(slot)
    latest[key] = ct.c_uint64(max(until_ns, int(latest[key].value)))


def muted(bpf: Any, slot: int) -> int:
    """Events of rule ``slot`` the kernel skipped because it was muted, over every CPU."""
    return int(sum(bpf[b"muted_by_rule"][ct.c_int(slot)]))


__all__ = ["mute", "mute_process", "muted", "reset"]
