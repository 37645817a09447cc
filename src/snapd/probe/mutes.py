"""Mutes: a rule whose events are useless (its budget spent, its interval running for a
process) costs a map lookup per hit in the kernel, not an event. The maps are probe.bpf.c's
``mutes`` (per rule: its own mute, and the latest end of its per-process mutes, so that the
program skips ``pmutes``, a hash, when none can run; one row, so one lookup per hit) and
``pmutes`` (per rule and process). Only the daemon writes them, from one thread: a row is read,
changed and written back whole."""

from __future__ import annotations

import ctypes as ct
from typing import Any


def reset(bpf: Any, slot: int) -> None:
    """A reused slot starts unmuted: its previous rule's budget is not this one's."""
    t = bpf[b"mutes"]
    t[ct.c_int(slot)] = t.Leaf(until=0, pmax=0)


def mute(bpf: Any, slot: int, until_ns: int | None) -> None:
    """Mute rule ``slot`` until CLOCK_MONOTONIC ``until_ns``; None unmutes it."""
    t, key = bpf[b"mutes"], ct.c_int(slot)
    t[key] = t.Leaf(until=until_ns or 0, pmax=t[key].pmax)


def mute_process(bpf: Any, slot: int, gen: int, pid: int, until_ns: int) -> None:
    """Mute rule ``slot`` (of generation ``gen``) for process ``pid`` until ``until_ns``."""
    t = bpf[b"pmutes"]
    t[t.Key(slot=slot, tgid=pid)] = t.Leaf(until=until_ns, gen=gen)
    # after the row, so that the program never sees pmax let it skip a row that exists
    m, key = bpf[b"mutes"], ct.c_int(slot)
    old = m[key]
    m[key] = m.Leaf(until=old.until, pmax=max(until_ns, int(old.pmax)))


def muted(bpf: Any, slot: int) -> int:
    """Events of rule ``slot`` the kernel skipped because it was muted, over every CPU."""
    return int(sum(bpf[b"muted_by_rule"][ct.c_int(slot)]))


__all__ = ["mute", "mute_process", "muted", "reset"]
