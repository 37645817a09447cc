"""Constants shared by probe.bpf.c and Python, defined once here and passed to C as -D flags.

This module imports nothing from bcc.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# The predicate encoding and the rule-language bounds belong to snapd.rules (an earlier stage);
# the probe only sizes its maps from them.
from snapd.rules.bounds import GLOB_MAX, MAX_INSNS, WIN_SLOTS
from snapd.rules.expr import Field, Insn, Op
from snapd.sys import btf

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
    ]
    for enum in (Insn, Op):
        out += [f"-D{enum.__name__.upper()}_{m.name}={m.value}" for m in enum]
    out += [f"-DFIELD_{m.name}={m.value}" for m in Field]
    out += [f"-DRF_{m.name}={m.value}" for m in RuleFlag]
    out += [f"-DEF_{m.name}={m.value}" for m in EventFlag]
    out += [f"-DGLOBAL_{m.name}={m.value}" for m in Global]
    out += [f"-DCTR_{m.name}={m.value}" for m in Counter]
    return out + task_offsets()


def task_offsets() -> list[str]:
    """struct task_struct offsets of the running kernel, as -D flags: the headers bcc compiles
    against may be another kernel's (see snapd.sys.btf). Without BTF none are given and the
    program falls back to the headers' offsetof (probe.bpf.c)."""
    try:
        ptrace = btf.member_offset("task_struct", "ptrace")
        leader = btf.member_offset("task_struct", "group_leader")
    except btf.BtfError:
        return []
    return [f"-DTASK_PTRACE_OFF={ptrace}", f"-DTASK_GROUP_LEADER_OFF={leader}"]


__all__ = ["GLOB_MAX", "MAX_INSNS", "WIN_SLOTS", "Field", "Insn", "Op"]
