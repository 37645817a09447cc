"""What arming a rule takes, worked out without BPF: its ``rule_cfg`` row, its syscalls (numbers,
tracepoints, how to read their arguments), the perf events it needs.

:class:`~snapd.probe.probes.Probes` arms a rule from its :class:`Plan`; ``snapd check`` builds
the same plan and asks the kernel for what the plan needs (tracepoints in tracefs, perf events
it may open) without compiling the program, which is the same whatever the rule says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapd.errors import SnapdError
from snapd.probe import layout, targets, uattach, uprobes
from snapd.probe.symbols import ResolveError
from snapd.rules import syscalls as _sys
from snapd.rules.error import RuleError
from snapd.rules.expr import compile_expr
from snapd.rules.model import (
    CpuTrigger,
    EveryTrigger,
    FunctionTrigger,
    Rule,
    SignalTrigger,
    StopMode,
    SyscallTrigger,
    UsdtTrigger,
)
from snapd.rules.probespec import fields_read
from snapd.sys.perf import try_cpu_clock

#: struct sysmask argx, per ArgKind: the shift that keeps the type's width, bit 7 when signed
ARGX = {
    _sys.ArgKind.S64: 0,
    _sys.ArgKind.S32: 32 | 0x80,
    _sys.ArgKind.U32: 32,
    _sys.ArgKind.U16: 48,
}


def rule_error(rule: Rule, msg: str) -> RuleError:
    return RuleError(rule.path or rule.name, 1, 1, f"rule '{rule.name}': {msg}")


def resolve_error(rule: Rule, err: SnapdError) -> RuleError:
    """``err`` at the line and column of the rule key it is about (a ResolveError's binary,
    symbol or probe), else at the rule's first line."""
    trig = rule.trigger
    if not isinstance(err, ResolveError) or not isinstance(trig, (FunctionTrigger, UsdtTrigger)):
        return rule_error(rule, str(err))
    at = next((m for m in trig.marks if m.key == err.key), None)
    if at is None:
        return rule_error(rule, str(err))
    where = f"pid {err.pid}: " if err.pid is not None else ""
    msg = f"trigger.{rule.kind.value}.{err.key}: {where}{err.msg}"
    return RuleError(rule.path or rule.name, at.line, at.col, msg)


@dataclass(frozen=True)
class SyscallUse:
    name: str  # as the rule names it (the user's name)
    tracepoint: str  # syscalls:sys_enter_<tracepoint>
    nr: int
    at_exit: bool
    argx: tuple[int, ...]  # 8 bytes for struct sysmask

    @property
    def tracepoints(self) -> list[str]:
        tps = [f"syscalls:sys_enter_{self.tracepoint}"]
        return tps + ([f"syscalls:sys_exit_{self.tracepoint}"] if self.at_exit else [])


@dataclass(frozen=True)
class Plan:
    rule: Rule
    cgroup: str | None  # the target's cgroup path, resolved now (unit, cgroup selectors)
    cfg: layout.RuleCfg  # gen 0: Probes sets it when it writes the row
    syscalls: tuple[SyscallUse, ...] = ()
    tick_period_ns: int | None = None  # every: a cpu-clock event of this period
    any_syscall: bool = False  # every + then: any (raw_syscalls:sys_enter)
    cpu: bool = False  # cpu: the ~99 Hz sampler on every CPU
    uprobe: bool = False  # function, usdt: uprobes in each target (snapd.probe.uattach)
    signals: int = 0  # signal: the mask of its signals (bit sig-1) for signal_deliver


def argx(name: str) -> tuple[int, ...]:
    """How to read each argument register of ``name`` (all 64-bit when the format is unknown)."""
    a = _sys.args(name) or ()
    return tuple(ARGX[x.kind] for x in a[:6]) + (0,) * (8 - min(len(a), 6))


def plan(rule: Rule, cgroup: str | None = None) -> Plan:
    """The plan for ``rule``; RuleError when it cannot be armed on this system."""
    in_target = (SyscallTrigger, CpuTrigger, FunctionTrigger, UsdtTrigger, SignalTrigger)
    armed = isinstance(rule.trigger, EveryTrigger) and rule.trigger.then is not None
    if rule.action.stop is StopMode.KERNEL and not (isinstance(rule.trigger, in_target) or armed):
        raise rule_error(
            rule,
            "stop: kernel needs a syscall, function, usdt, signal, cpu or every+then trigger "
            "(the probe must run in the target)",
        )
    cgroup = cgroup if cgroup is not None else targets.target_cgroup(rule.target)
    cfg = rule_cfg(rule, cgroup)
    trig = rule.trigger
    names = trig.syscalls if isinstance(trig, SyscallTrigger) else ()
    if isinstance(trig, EveryTrigger) and trig.then is not None and not trig.then_any:
        names = trig.then
    uses = []
    for name in names:
        call = _sys.lookup(name)
        if call.nr is None:
            raise rule_error(rule, _sys.unknown_number(name))
        at_exit = isinstance(trig, SyscallTrigger) and trig.at_exit
        uses.append(SyscallUse(call.name, call.tracepoint, call.nr, at_exit, argx(name)))
    if isinstance(trig, SyscallTrigger):
        return Plan(rule, cgroup, cfg, syscalls=tuple(uses))
    if isinstance(trig, EveryTrigger):
        return Plan(rule, cgroup, cfg, tuple(uses), tick_period_ns=trig.period_ns, any_syscall=trig.then_any)
    if isinstance(trig, CpuTrigger):
        return Plan(rule, cgroup, cfg, cpu=True)
    if isinstance(trig, (FunctionTrigger, UsdtTrigger)):
        return Plan(rule, cgroup, cfg, uprobe=True)
    if isinstance(trig, SignalTrigger):
        return Plan(rule, cgroup, cfg, signals=sum(1 << (s - 1) for s in trig.signals))
    return Plan(rule, cgroup, cfg)


def rule_cfg(rule: Rule, cgroup: str | None) -> layout.RuleCfg:
    """The rule's row in the ``rules`` map (gen 0), from validated, typed values only."""
    t = rule.target
    leaf = layout.RuleCfg()
    flags = layout.RuleFlag(0)
    if t.pid is not None:
        flags |= layout.RuleFlag.PID
        leaf.pid = t.pid
    if t.uid is not None:
        flags |= layout.RuleFlag.UID
        leaf.uid = t.uid
    if t.exe is not None:
        flags |= layout.RuleFlag.EXE
        h1, h2 = targets.exe_hashes(t.exe)
        leaf.exe_hash[0] = h1
        leaf.exe_hash[1] = h2
    if t.unit is not None or t.cgroup is not None:
        flags |= layout.RuleFlag.CGROUP
        leaf.cg_level, leaf.cg_id = targets.cgroup_id(cgroup)
    if t.comm is not None:
        flags |= layout.RuleFlag.COMM
        g = targets.compile_glob(t.comm)
        leaf.glob_len, leaf.glob_star = g.length, g.star
        for i, m in enumerate(g.chars):
            leaf.glob_chars[i] = m
    if rule.action.stop is StopMode.KERNEL:
        flags |= layout.RuleFlag.STOP_KERNEL
    trig = rule.trigger
    if isinstance(trig, EveryTrigger) and trig.then is not None:
        flags |= layout.RuleFlag.ARMED
    if isinstance(trig, SyscallTrigger):
        leaf.count = trig.count
        leaf.within_ns = trig.within_ns or 0
    if isinstance(trig, (SyscallTrigger, FunctionTrigger, UsdtTrigger)):
        if trig.when is not None:
            code = compile_expr(trig.when)
            leaf.n_insns = len(code)
            # a function/usdt rule's string comparison reads the pointer in its argument (a
            # USDT operand is read only where `reads` names it: uprobe.bpf.c uprobe_args)
            read = trig.when.fields() if isinstance(trig, SyscallTrigger) else fields_read(trig.when)
            leaf.reads = sum(1 << f for f in read)
            for i, ins in enumerate(code):
                leaf.insns[i].kind = ins.kind
                leaf.insns[i].field = ins.field
                leaf.insns[i].op = ins.op
                leaf.insns[i].k = ins.k
    elif isinstance(trig, CpuTrigger):
        flags |= layout.RuleFlag.CPU
        leaf.cpu_bucket_ns = max(1, trig.for_ns // layout.CPU_BUCKETS)
        samples = trig.above_pct / 100.0 * trig.for_ns / layout.CPU_SAMPLE_PERIOD_NS
        leaf.cpu_threshold = max(1, round(samples))
    leaf.flags = int(flags)
    return leaf


def check_kernel(p: Plan) -> None:
    """Ask the running kernel for what ``p`` needs, without BPF: its tracepoints exist and the
    perf events it uses may be opened. RuleError naming the first thing missing."""
    d = _sys.events_dir()
    if p.signals and (
        d is None or not os.path.isdir(os.path.join(os.path.dirname(d), "signal", "signal_deliver"))
    ):
        raise rule_error(p.rule, "no tracepoint signal:signal_deliver on this kernel (tracefs)")
    for use in p.syscalls:
        for tp in use.tracepoints:
            event = tp.split(":", 1)[1]
            if d is None or not os.path.isdir(os.path.join(d, event)):
                raise rule_error(p.rule, f"no tracepoint {tp} on this kernel (tracefs)")
    if p.uprobe:
        trig = p.rule.trigger
        assert isinstance(trig, (FunctionTrigger, UsdtTrigger))
        try:
            uprobes.pmu()
            uattach.host_check(trig)
        except SnapdError as err:
            raise resolve_error(p.rule, err) from err
    period = p.tick_period_ns or (layout.CPU_SAMPLE_PERIOD_NS if p.cpu else None)
    if period is not None:
        try:
            try_cpu_clock(period)
        except OSError as err:
            raise rule_error(p.rule, f"cannot open a cpu-clock perf event: {err.strerror}") from err
