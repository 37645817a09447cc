"""Constants and map rows shared by probe.bpf.c and Python, defined once here: constants are
passed to C as -D flags, rows (``struct rule_cfg``, ``struct sysmask``) are ctypes structures
whose layout Probes checks against the compiled program's own once it is built.

This module imports nothing from bcc: ``snapd check`` builds a rule's rows without compiling.
"""

from __future__ import annotations

import ctypes as ct
from enum import IntEnum, IntFlag
from pathlib import Path

# The predicate encoding and the rule-language bounds belong to snapd.rules (an earlier stage);
# the probe only sizes its maps from them.
from snapd import kernel
from snapd.probe import trigger_layout
from snapd.rules.bounds import GLOB_MAX, MAX_INSNS, WIN_SLOTS
from snapd.rules.expr import MAX_STRS, Field, Insn, Op
from snapd.sys import btf

MAX_RULES = 64  # one bit per rule in a u64 mask
MAX_CHAIN = 32  # rules evaluated per syscall event: one tail call each (MAX_TAIL_CALL_CNT 33)
CPU_BUCKETS = 16  # sliding window of the cpu trigger, in buckets
MAX_TARGETS = 65536
MAX_INFLIGHT = 16384
MAX_WINDOWS = 4096
RINGBUF_PAGES = 256  # 1 MiB with 4 KiB pages
PATH_MAX = 256  # exec filenames hashed for `exe`; longer ones never match in the kernel
MAX_STOPPED = 4096  # processes stop: kernel may hold stopped at once
MAX_MINE = 4096  # tasks snapd created (action.run, sandboxes, snapshot children) alive at once
MAX_STRSRCS = 16384  # (rule, syscall, string comparison) -> where the string is
MUTE_FOREVER = (1 << 64) - 1  # a `mutes` value: until the daemon unmutes the rule
# The flags of a fork snapshot's injected clone: CLONE_FILES, exit signal 0 (snapd.core.fork
# CLONE_ARGS; probe may not import core, tests/probe checks they agree).
SNAPSHOT_CLONE_FLAGS = 0x400
CPU_SAMPLE_PERIOD_NS = 10_101_010  # ~99 Hz per CPU, off the common 100 Hz timer beat
SIGNAL_STOP = 19  # SIGSTOP on every Linux architecture snapd supports (x86_64, arm64)


#: probe.bpf.c's tail-call targets: (program, its one-slot BPF_PROG_ARRAY, bcc program type).
TAIL_CALLS = (
    (b"snapd_eval", b"evalprog", "TRACEPOINT"),
    (b"snapd_classify", b"execprog", "TRACEPOINT"),
    (b"snapd_cpu_step", b"cpuprog", "PERF_EVENT"),
)


class RuleFlag(IntFlag):
    PID = 1
    UID = 2
    EXE = 4
    CGROUP = 8
    COMM = 16
    STOP_KERNEL = 32
    CPU = 64
    ARMED = 128  # every + then: its syscalls fire only once per tick and process (armed.bpf.c)


class EventFlag(IntFlag):
    EXIT = 1
    STOPPED = 2
    CPU = 4
    TICK = 8
    UPROBE = 16  # a function or usdt trigger; value is the usite (cookie)
    RETURN = 32  # ... at the function's return
    SIGNAL = 64  # a signal trigger; value is the signal
    AT_EVENT = 128  # not an event: the registers and stack of the event just before it
    NEW_TARGET = 256  # not an event: a fork made `pid` a target of the uprobe rules in `value`


class Global(IntEnum):
    ACTIVE = 0  # any rule loaded: the exec probe classifies new processes
    PID_RULES = 1  # mask of rules with a pid selector (children do not inherit them)
    CPU_RULES = 2  # mask of rules with a cpu trigger
    SELF = 3  # the daemon's tgid: it and what it creates are never targets
    DUMPER = 4  # the dumper's tgid (the tracer of every dump)
    SIG_RULES = 5  # mask of rules with a signal trigger
    ARMED_RULES = 6  # mask of every + then rules: their ticks arm, not fire
    ANY_RULES = 7  # mask of every + then: any rules (raw_syscalls:sys_enter, snapd_raw_enter)
    UPROBE_RULES = 8  # mask of function/usdt rules: a target's fork says so (EF_NEW_TARGET)
    NR = 9


class Counter(IntEnum):
    """Per event and rule, exactly one of MUTED or SEEN; a SEEN one may then be FIRED (or
    DROPPED when the ring buffer is full)."""

    SEEN = 0  # a targeted process hit a rule's syscall (the predicate was evaluated)
    FIRED = 1
    DROPPED = 2  # ring buffer full
    MUTED = 3  # the rule was muted (max_cores spent, min_interval running): not evaluated
    NR = 4


class InsnRow(ct.Structure):
    """struct insn."""

    _fields_ = [
        ("kind", ct.c_uint8),
        ("field", ct.c_uint8),
        ("op", ct.c_uint8),
        ("pad", ct.c_uint8 * 5),
        ("k", ct.c_int64),
    ]


class RuleCfg(ct.Structure):
    """struct rule_cfg: one rule's row in the ``rules`` map."""

    _fields_ = [
        ("gen", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("pid", ct.c_uint32),
        ("uid", ct.c_uint32),
        ("cg_level", ct.c_uint32),
        ("count", ct.c_uint32),
        ("cg_id", ct.c_uint64),
        ("exe_hash", ct.c_uint64 * 2),
        ("within_ns", ct.c_uint64),
        ("cpu_bucket_ns", ct.c_uint64),
        ("cpu_threshold", ct.c_uint64),
        ("n_insns", ct.c_uint32),
        ("glob_len", ct.c_uint32),
        ("glob_star", ct.c_uint32),
        ("reads", ct.c_uint32),
        ("insns", InsnRow * MAX_INSNS),
        ("glob_chars", ct.c_uint32 * 256),
    ]


class SysMask(ct.Structure):
    """struct sysmask: the rules evaluated on one syscall number, and how to read its args."""

    _fields_ = [
        ("enter", ct.c_uint64),
        ("exit", ct.c_uint64),
        ("argx", ct.c_uint8 * 8),
    ]


def same_layout(ours: type[ct.Structure], theirs: type[ct.Structure]) -> bool:
    """Whether a ctypes row has the size and field offsets of the compiled program's."""
    if ct.sizeof(ours) != ct.sizeof(theirs):
        return False
    for name, *_ in ours._fields_:
        if not hasattr(theirs, name) or getattr(ours, name).offset != getattr(theirs, name).offset:
            return False
    return True


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
        f"-DSNAPD_MAX_STOPPED={MAX_STOPPED}",
        f"-DSNAPD_MAX_MINE={MAX_MINE}",
        f"-DSNAPD_MAX_STRSRCS={MAX_STRSRCS}",
        f"-DSNAPD_MAX_STRS={MAX_STRS}",
        f"-DSIGNAL_STOP={SIGNAL_STOP}",
        f"-DSNAPSHOT_CLONE_FLAGS={SNAPSHOT_CLONE_FLAGS}",
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
    return out + trigger_layout.cflags() + task_offsets() + [include_dir()]


def include_dir() -> str:
    """-I of the directory holding the snapd package: probe.bpf.c includes the trigger pieces
    as "snapd/probe/NAME.bpf.c" (bcc compiles it as a virtual file, so a path relative to
    probe.bpf.c is not found). A path of this installation, never of a rule."""
    return "-I" + str(Path(__file__).resolve().parent.parent.parent)


def task_offsets() -> list[str]:
    """Offsets of the kernel struct members the program reads, as -D flags: the headers bcc
    compiles against may be another kernel's (see snapd.sys.btf). ``task_struct.ptrace`` and
    ``.group_leader`` (stop: kernel, the snapshot-children exclusion); ``task_struct.signal`` and
    ``signal_struct.live`` (the live-thread count of the exit probe where sched_process_exit has
    no group_dead). Without BTF none are given and the program falls back to the headers'
    offsetof (probe.bpf.c)."""
    try:
        ptrace = btf.member_offset("task_struct", "ptrace")
        leader = btf.member_offset("task_struct", "group_leader")
        signal = btf.member_offset("task_struct", "signal")
        live = btf.member_offset("signal_struct", "live")
    except btf.BtfError:
        return []
    return [
        f"-DTASK_PTRACE_OFF={ptrace}",
        f"-DTASK_GROUP_LEADER_OFF={leader}",
        f"-DTASK_SIGNAL_OFF={signal}",
        f"-DSIGNAL_LIVE_OFF={live}",
    ]


__all__ = ["GLOB_MAX", "MAX_INSNS", "WIN_SLOTS", "Field", "Insn", "Op"]
