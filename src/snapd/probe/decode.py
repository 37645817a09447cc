"""Records of the ``events`` ring buffer (``struct event`` in probe.bpf.c) turned into Events."""

from __future__ import annotations

import ctypes as ct
import dataclasses
import signal
import struct
from typing import Any

from snapd import procfs
from snapd.probe import layout, trigger_layout
from snapd.probe.event import Event, Kind, Sender, UserStack
from snapd.rules import syscalls as _sys
from snapd.rules.model import CpuTrigger, FunctionTrigger, Rule, UsdtTrigger


class RawEvent(ct.Structure):
    """struct event in probe.bpf.c."""

    _fields_ = [
        ("ts", ct.c_uint64),
        ("args", ct.c_int64 * 6),
        ("ret", ct.c_int64),
        ("value", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("slot", ct.c_uint32),
        ("gen", ct.c_uint32),
        ("nr", ct.c_int32),
        ("flags", ct.c_uint32),
        ("comm", ct.c_char * 16),
        ("args_more", ct.c_int64 * 6),  # arg6..arg11 of a USDT probe
    ]


AT_REGS = (
    trigger_layout.USER_REGS
)  # struct at_event (atevent.bpf.c): user_regs_struct words, stack_len, flags, stack
_AT_HEAD = ct.sizeof(RawEvent) + 8 * AT_REGS + 8


def user_stack(data: Any, size: int) -> UserStack | None:
    """The registers and stack of an at-event record (struct at_rec), or None when it holds no
    registers (the probe could not read them)."""
    raw = ct.string_at(data, min(size, _AT_HEAD + trigger_layout.EVENT_STACK))
    if len(raw) < _AT_HEAD:
        return None
    stack_len, flags = struct.unpack_from("<II", raw, _AT_HEAD - 8)
    if not flags & 1:  # AT_F_REGS
        return None
    regs = raw[ct.sizeof(RawEvent) : _AT_HEAD - 8]
    return UserStack(regs, raw[_AT_HEAD : _AT_HEAD + stack_len])


def join_stack(pending: list[Event], rule: str, raw: RawEvent, stack: UserStack | None) -> list[Event]:
    """``pending`` with ``stack`` given to the event it belongs to (same rule, thread, time)."""
    if stack is None:
        return pending
    for i in range(len(pending) - 1, -1, -1):
        ev = pending[i]
        if ev.rule == rule and ev.tid == raw.tid and ev.time_ns == raw.ts and ev.stack is None:
            return [*pending[:i], dataclasses.replace(ev, stack=stack), *pending[i + 1 :]]
    return pending


def _sender(raw: RawEvent) -> Sender | None:
    """probe.bpf.c sig_sender_fields: args[3] the sender's tgid | uid << 32 (0: not seen sent),
    args[4..5] its comm, ret the si_code it sent with."""
    who = int(raw.args[3]) & 0xFFFF_FFFF_FFFF_FFFF
    if not who:
        return None
    comm = struct.pack("<qq", int(raw.args[4]), int(raw.args[5])).split(b"\0", 1)[0]
    return Sender(who & 0xFFFF_FFFF, who >> 32, comm.decode("utf-8", "replace"), int(raw.ret))


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def tick_event(rule: Rule, pid: int, ts: int) -> Event:
    """An `every` firing of ``rule`` for process ``pid``."""
    return Event(rule=rule.name, pid=pid, tid=pid, comm=procfs.comm(pid), kind=Kind.EVERY, time_ns=ts)


def to_event(raw: RawEvent, rule: Rule, names_by_nr: dict[int, str]) -> Event:
    """A syscall, cpu, function or usdt firing of ``rule``."""
    flags = layout.EventFlag(raw.flags)
    comm = raw.comm.decode("utf-8", "replace")
    stopped = bool(flags & layout.EventFlag.STOPPED)
    if flags & layout.EventFlag.CPU:
        trig = rule.trigger
        assert isinstance(trig, CpuTrigger)
        pct = raw.value * layout.CPU_SAMPLE_PERIOD_NS * 100 // trig.for_ns
        return Event(
            rule=rule.name,
            pid=raw.pid,
            tid=raw.tid,
            comm=comm,
            kind=Kind.CPU,
            time_ns=raw.ts,
            value=int(pct),
            stopped=stopped,
        )
    if flags & layout.EventFlag.SIGNAL:
        return Event(
            rule=rule.name,
            pid=raw.pid,
            tid=raw.tid,
            comm=comm,
            kind=Kind.SIGNAL,
            time_ns=raw.ts,
            probe=_signal_name(int(raw.value)),
            args=(int(raw.args[0]), int(raw.args[1])),  # the signal, its si_code
            value=int(raw.value),
            stopped=stopped,
            sender=_sender(raw),
        )
    trig = rule.trigger
    if flags & layout.EventFlag.UPROBE and isinstance(trig, (FunctionTrigger, UsdtTrigger)):
        at_return = bool(flags & layout.EventFlag.RETURN)
        return Event(
            rule=rule.name,
            pid=raw.pid,
            tid=raw.tid,
            comm=comm,
            kind=Kind.FUNCTION if isinstance(trig, FunctionTrigger) else Kind.USDT,
            time_ns=raw.ts,
            probe=trig.symbol if isinstance(trig, FunctionTrigger) else trig.probe,
            # value: the site's operand count (USDT, up to 12) or 6 (a function's registers)
            args=tuple(int(a) for a in (*raw.args, *raw.args_more))[: min(int(raw.value), 12)],
            ret=int(raw.ret) if at_return else None,
            stopped=stopped,
        )
    name = names_by_nr.get(raw.nr, f"syscall_{raw.nr}")
    n = _sys.arity(name)
    return Event(
        rule=rule.name,
        pid=raw.pid,
        tid=raw.tid,
        comm=comm,
        kind=Kind.SYSCALL,
        time_ns=raw.ts,
        syscall=name,
        args=tuple(int(a) for a in raw.args[: 6 if n is None else n]),
        ret=int(raw.ret) if flags & layout.EventFlag.EXIT else None,
        stopped=stopped,
    )
