"""A rule's string comparisons as rows of the program's maps (the strings section of
probe.bpf.c): per comparison k its compiled pattern (``strpats[slot * MAX_STRS + k]``), per
(syscall, k) where the string is (``strsrcs``; a function/usdt rule's under UPROBE_NR: the C
string its argument points to), and their number (``strn[slot]``). Rows are
data compiled from validated patterns (snapd.probe.strings): no rule text reaches C."""

from __future__ import annotations

import contextlib
import ctypes as ct
from typing import Any

from snapd.probe import strings
from snapd.probe.plan import Plan
from snapd.probe.trigger_layout import UPROBE_NR
from snapd.rules import sysargs
from snapd.rules.expr import MAX_STRS
from snapd.rules.expr import strings as str_cmps
from snapd.rules.model import FunctionTrigger, SyscallTrigger, UsdtTrigger
from snapd.rules.probespec import STRING_ARGS
from snapd.rules.sysargs import Source


def rows(p: Plan) -> tuple[list[tuple[int, int, bytes]], list[bytes]]:
    """([(syscall nr, k, struct str_src bytes)], [struct str_pattern bytes by k])."""
    trig = p.rule.trigger
    if isinstance(trig, (FunctionTrigger, UsdtTrigger)) and trig.when is not None:
        cmps = str_cmps(trig.when)
        srcs = [
            (UPROBE_NR, sc.index, strings.pack_source(sysargs.StringArg(Source.CSTR, STRING_ARGS[sc.name])))
            for sc in cmps
        ]
        return srcs, [strings.compile_pattern(sc.pattern).pack() for sc in cmps]
    if not isinstance(trig, SyscallTrigger) or trig.when is None:
        return [], []
    cmps = str_cmps(trig.when)
    srcs = []
    for use in p.syscalls:
        for sc in cmps:
            where = sysargs.string_arg(use.name, sc.name)
            if isinstance(where, str):  # the loader checked it: only a changed kernel gets here
                raise ValueError(f"{sc.name}: {where}")
            srcs.append((use.nr, sc.index, strings.pack_source(where)))
    return srcs, [strings.compile_pattern(sc.pattern).pack() for sc in cmps]


def _put(table: Any, key: Any, raw: bytes) -> None:
    leaf = table.Leaf()
    ct.memmove(ct.addressof(leaf), raw, len(raw))
    table[key] = leaf


def write(bpf: Any, slot: int, p: Plan) -> None:
    srcs, pats = rows(p)
    t = bpf[b"strsrcs"]
    for nr, k, raw in srcs:
        _put(t, t.Key(slot=slot, nr=nr, k=k), raw)
    for k, raw in enumerate(pats):
        _put(bpf[b"strpats"], ct.c_int(slot * MAX_STRS + k), raw)
    bpf[b"strn"][ct.c_int(slot)] = ct.c_uint32(len(pats))


def clear(bpf: Any, slot: int, p: Plan) -> None:
    bpf[b"strn"][ct.c_int(slot)] = ct.c_uint32(0)
    t = bpf[b"strsrcs"]
    for nr, k, _ in rows(p)[0]:
        with contextlib.suppress(KeyError):
            del t[t.Key(slot=slot, nr=nr, k=k)]
