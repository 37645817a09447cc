"""The ``sysmasks`` map: per syscall number, the rules evaluated at its sys_enter and sys_exit
(probe.bpf.c ``struct sysmask``), and how its argument registers are read. Rows are shared by
every rule on that syscall: a rule adds and removes only its own bit."""

from __future__ import annotations

import ctypes as ct
from typing import Any

from snapd.probe import layout
from snapd.probe.plan import Plan, SyscallUse, rule_error

#: every + then: any (one program on raw_syscalls:sys_enter: snapd_raw_enter)
RAW_TP = "raw_syscalls:sys_enter"


def check_chains(bpf: Any, p: Plan, keep: int) -> None:
    """RuleError if one of ``p``'s syscalls would carry more than MAX_CHAIN rules (the tail
    calls of one event); ``keep``: the bits of the rules that stay (all but one replaced)."""
    masks = bpf[b"sysmasks"]
    for use in p.syscalls:
        cur = masks.get(ct.c_uint32(use.nr))
        n = bin((cur.enter | cur.exit) & keep).count("1") if cur is not None else 0
        if n >= layout.MAX_CHAIN:
            raise rule_error(p.rule, f"more than {layout.MAX_CHAIN} rules on syscall '{use.name}'")


def add(bpf: Any, bit: int, uses: tuple[SyscallUse, ...]) -> None:
    masks = bpf[b"sysmasks"]
    for use in uses:
        key = ct.c_uint32(use.nr)
        cur = masks.get(key)
        leaf = masks.Leaf()
        if cur is not None:
            ct.memmove(ct.byref(leaf), ct.byref(cur), ct.sizeof(leaf))
        if use.at_exit:
            leaf.exit |= bit
        else:
            leaf.enter |= bit
        for i, x in enumerate(use.argx):
            leaf.argx[i] = x
        masks[key] = leaf


def remove(bpf: Any, bit: int, nrs: list[int]) -> None:
    masks = bpf[b"sysmasks"]
    for nr in nrs:
        key = ct.c_uint32(nr)
        cur = masks.get(key)
        if cur is None:
            continue
        if (cur.enter | cur.exit) & ~bit:
            leaf = masks.Leaf()
            ct.memmove(ct.byref(leaf), ct.byref(cur), ct.sizeof(leaf))
            leaf.enter, leaf.exit = cur.enter & ~bit, cur.exit & ~bit
            masks[key] = leaf
        else:
            del masks[key]
