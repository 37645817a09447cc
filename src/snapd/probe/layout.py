"""Constants shared by probe.bpf.c and Python, defined once here and passed to C as -D flags.

This module imports nothing from bcc.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# The predicate encoding and the rule-language limits belong to snapd.rules (an earlier stage);
# the probe only sizes its maps from them.
from snapd import kernel
from snapd.rules.expr import MAX_INSNS, Field, Insn, Op
from snapd.rules.loader import GLOB_MAX, WIN_SLOTS

MAX_RULES = 64  # one bit per rule in a u64 mask
MAX_CHAIN = 32  # rules evaluated per syscall event: one tail call each (MAX_TAIL_CALL_CNT 33)
CPU_BUCKETS = 16  # sliding window of the cpu trigger, in buckets
MAX_TARGETS = 65536
MAX_INFLIGHT = 16384
MAX_WINDOWS = 4096
RINGBUF_PAGES = 256  # 1 MiB with 4 KiB pages
PATH_MAX = 256  # exec filenames hashed for `exe`; longer ones never match in the kernel
CPU_SAMPLE_PERIOD_NS = 10_101_010  # ~99 Hz per CPU, off the common 100 Hz timer beat
SIGNAL_STOP = 19  # SIGSTOP on every Linux architecture snapd supports (x86_64, arm64)


class RuleFlag(IntFlag):
    PID = 1
    UID = 2
    EXE = 4
    CGROUP = 8
    COMM = 16
    STOP_KERNEL = 32
    CPU = 64


class EventFlag(IntFlag):
    EXIT = 1
    STOPPED = 2
    CPU = 4
    TICK = 8


class Global(IntEnum):
    ACTIVE = 0  # any rule loaded: the exec probe classifies new processes
    PID_RULES = 1  # mask of rules with a pid selector (children do not inherit them)
    CPU_RULES = 2  # mask of rules with a cpu trigger
    NR = 3


class Counter(IntEnum):
    SEEN = 0  # a targeted process hit a rule's syscall (before the predicate)
    FIRED = 1
    DROPPED = 2  # ring buffer full
    NR = 3


def cflags() -> list[str]:
    """The -D flags that give probe.bpf.c every constant above."""
    out = [
        f"-DSNAPD_MAX_RULES={MAX_RULES}",
        f"-DSNAPD_MAX_INSNS={MAX_INSNS}",
        f"-DSNAPD_WIN_SLOTS={WIN_SLOTS}",
        f"-DSNAPD_CPU_BUCKETS={CPU_BUCKETS}",
        f"-DSNAPD_MAX_TARGETS={MAX_TARGETS}",
        f"-DSNAPD_MAX_INFLIGHT={MAX_INFLIGHT}",
        f"-DSNAPD_MAX_WINDOWS={MAX_WINDOWS}",
        f"-DSNAPD_RINGBUF_PAGES={RINGBUF_PAGES}",
        f"-DSNAPD_PATH_MAX={PATH_MAX}",
        f"-DSIGNAL_STOP={SIGNAL_STOP}",
        # what the running kernel offers (snapd.kernel), never what a rule says
        f"-DSNAPD_EXIT_GROUP_DEAD={int(kernel.has(kernel.Feature.EXIT_GROUP_DEAD))}",
    ]
    for enum in (Insn, Op):
        out += [f"-D{enum.__name__.upper()}_{m.name}={m.value}" for m in enum]
    out += [f"-DFIELD_{m.name}={m.value}" for m in Field]
    out += [f"-DRF_{m.name}={m.value}" for m in RuleFlag]
    out += [f"-DEF_{m.name}={m.value}" for m in EventFlag]
    out += [f"-DGLOBAL_{m.name}={m.value}" for m in Global]
    out += [f"-DCTR_{m.name}={m.value}" for m in Counter]
    return out


__all__ = ["GLOB_MAX", "MAX_INSNS", "WIN_SLOTS", "Field", "Insn", "Op"]
