"""The typed rule: what a validated rule file means, as frozen dataclasses.

Every value here has been checked by :mod:`snapd.rules.loader`; later stages (probe, daemon) trust
these types and never look at YAML.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from enum import Enum

from snapd.content import DEFAULT_CONTENT, ContentSpec, SnapshotMode
from snapd.rules.expr import Expr
from snapd.template import DEFAULT_TEMPLATE


class StopMode(str, Enum):
    PTRACE = "ptrace"  # the daemon halts the target with ptrace (default)
    KERNEL = "kernel"  # the probe sends SIGSTOP with bpf_send_signal (DTrace stop())


@dataclass(frozen=True)
class Target:
    """Process selectors; all given ones must match. ``comm`` may be a glob (``*`` and ``?``)."""

    pid: int | None = None
    comm: str | None = None
    exe: str | None = None
    unit: str | None = None
    cgroup: str | None = None
    uid: int | None = None


@dataclass(frozen=True)
class SyscallTrigger:
    syscalls: tuple[str, ...]
    when: Expr | None = None
    when_text: str | None = None
    count: int = 1  # fire on the count-th match (per process)
    within_ns: int | None = None  # ... inside this sliding window

    @property
    def at_exit(self) -> bool:
        """True when the predicate needs the syscall's result (ret, errno or latency)."""
        return self.when is not None and self.when.uses_exit()


THEN_ANY = "any"  # ``then: any``: the target's next syscall, whichever it is


@dataclass(frozen=True)
class EveryTrigger:
    """Every ``period_ns`` for each target; with ``then``, at each target's first call of one
    of those syscalls after each tick (the blog's gcore.d: the target is caught in a syscall)."""

    period_ns: int
    then: tuple[str, ...] | None = None  # (THEN_ANY,): every syscall the kernel traces

    @property
    def then_any(self) -> bool:
        return self.then == (THEN_ANY,)


@dataclass(frozen=True)
class CpuTrigger:
    above_pct: float  # share of one CPU, in percent (may exceed 100 for threaded targets)
    for_ns: int


@dataclass(frozen=True)
class RssTrigger:
    above_bytes: int


@dataclass(frozen=True)
class ThreadsTrigger:
    above: int


@dataclass(frozen=True)
class FdsTrigger:
    above: int


class ProbeAt(str, Enum):
    ENTRY = "entry"  # the function's first instruction: arg0..arg5 are its arguments
    RETURN = "return"  # its return: ret and latency, with the entry's arguments


@dataclass(frozen=True)
class KeyMark:
    """Where a rule file wrote one key's value (for errors found only when it is resolved)."""

    key: str  # binary, symbol, probe
    line: int
    col: int


@dataclass(frozen=True)
class FunctionTrigger:
    """A uprobe (``at: entry``) or uretprobe (``at: return``) on ``symbol`` of ``binary``, an
    absolute path or a library name (``libc.so.6``) resolved in each target."""

    binary: str
    symbol: str
    at: ProbeAt = ProbeAt.ENTRY
    when: Expr | None = None
    when_text: str | None = None
    marks: tuple[KeyMark, ...] = field(default=(), compare=False)

    @property
    def at_return(self) -> bool:
        return self.at is ProbeAt.RETURN


@dataclass(frozen=True)
class UsdtTrigger:
    """A USDT probe ``provider:name`` of ``binary``; its arguments are arg0..argN."""

    binary: str
    provider: str
    name: str
    when: Expr | None = None
    when_text: str | None = None
    marks: tuple[KeyMark, ...] = field(default=(), compare=False)

    @property
    def probe(self) -> str:
        return f"{self.provider}:{self.name}"


@dataclass(frozen=True)
class SignalTrigger:
    """The target is delivered one of ``signals`` (numbers), with a handler of its own to run."""

    signals: tuple[int, ...]


#: triggers whose probe is a uprobe in the target (the one uprobe program set)
ProbeTrigger = FunctionTrigger | UsdtTrigger

Trigger = (
    SyscallTrigger
    | EveryTrigger
    | CpuTrigger
    | RssTrigger
    | ThreadsTrigger
    | FdsTrigger
    | FunctionTrigger
    | UsdtTrigger
    | SignalTrigger
)


class Kind(str, Enum):
    """A trigger's kind: the key a rule file names it by, and what an Event says fired."""

    SYSCALL = "syscall"
    EVERY = "every"
    CPU = "cpu"
    RSS = "rss"
    THREADS = "threads"
    FDS = "fds"
    FUNCTION = "function"
    USDT = "usdt"
    SIGNAL = "signal"


TRIGGER_KINDS: dict[type, Kind] = {
    SyscallTrigger: Kind.SYSCALL,
    EveryTrigger: Kind.EVERY,
    CpuTrigger: Kind.CPU,
    RssTrigger: Kind.RSS,
    ThreadsTrigger: Kind.THREADS,
    FdsTrigger: Kind.FDS,
    FunctionTrigger: Kind.FUNCTION,
    UsdtTrigger: Kind.USDT,
    SignalTrigger: Kind.SIGNAL,
}


def trigger_kind(trigger: Trigger) -> Kind:
    return TRIGGER_KINDS[type(trigger)]


@dataclass(frozen=True)
class CoreAction:
    content: ContentSpec
    name: str = DEFAULT_TEMPLATE
    repeat: int = 1
    interval_ns: int = 5_000_000_000


@dataclass(frozen=True)
class Action:
    stop: StopMode = StopMode.PTRACE
    snapshot: SnapshotMode = SnapshotMode.AUTO  # fork above a size, frozen below (core.strategy)
    core: CoreAction = field(default_factory=lambda: CoreAction(DEFAULT_CONTENT))
    run: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Limits:
    max_cores: int = 3  # per rule, until the rule file changes
    min_interval_ns: int = 300_000_000_000  # per target process


@dataclass(frozen=True)
class ActiveWindow:
    """A local-time window ``HH:MM-HH:MM``; ``end <= start`` crosses midnight."""

    start_min: int
    end_min: int

    def contains(self, when: _dt.time) -> bool:
        m = when.hour * 60 + when.minute
        if self.start_min < self.end_min:
            return self.start_min <= m < self.end_min
        return m >= self.start_min or m < self.end_min

    def __str__(self) -> str:
        s, e = self.start_min, self.end_min
        return f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}"


@dataclass(frozen=True)
class Rule:
    name: str
    target: Target
    trigger: Trigger
    action: Action = field(default_factory=Action)
    limits: Limits = field(default_factory=Limits)
    description: str = ""
    active: ActiveWindow | None = None
    path: str = ""  # the file it came from ("" when built in code)

    @property
    def kind(self) -> Kind:
        return trigger_kind(self.trigger)

    def is_active(self, now: _dt.datetime | None = None) -> bool:
        """Whether the rule's `active` window (local time) includes ``now``."""
        if self.active is None:
            return True
        return self.active.contains((now or _dt.datetime.now()).time())
