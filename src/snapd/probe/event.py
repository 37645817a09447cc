"""Event: one firing of a rule, as the probe layer hands it to the daemon."""

from __future__ import annotations

from dataclasses import dataclass

from snapd.rules.model import Kind

__all__ = ["Event", "Kind", "Sender", "UserStack"]

#: si_code values of signals a process sent (include/uapi/asm-generic/siginfo.h); a positive
#: one (or SI_KERNEL) is the kernel's own: a fault, a timer, a child's exit
SENT_BY = {0: "kill", -6: "tgkill", -1: "sigqueue"}


@dataclass(frozen=True)
class UserStack:
    """What a probe recorded of the firing thread at the event: its user registers (struct
    user_regs_struct, arch/x86/include/asm/user_64.h) and a bounded copy of its user stack from
    the stack pointer up (``snapd.report.MAX_EVENT_STACK`` at most). The report unwinds it into
    the "at the event" frames, whatever the stop mode."""

    regs: bytes
    stack: bytes


@dataclass(frozen=True)
class Sender:
    """Who sent a signal event's signal: the task running when it was generated
    (signal:signal_generate). ``code`` is the si_code it was sent with; for the kernel's own
    signals (``by`` "kernel") the task is merely whatever ran then (the faulting thread itself,
    the exiting child's parent's waker...)."""

    pid: int  # the sender's tgid
    uid: int
    comm: str
    code: int

    @property
    def by(self) -> str:
        return SENT_BY.get(self.code, "kernel")

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "uid": self.uid, "comm": self.comm, "code": self.code, "by": self.by}


@dataclass(frozen=True)
class Event:
    """A rule fired for process ``pid`` (thread ``tid``).

    ``time_ns`` is CLOCK_MONOTONIC (``time.monotonic_ns()``; bpf_ktime_get_ns in the kernel).
    ``args`` are the syscall's raw arguments as signed 64-bit values, as many as it takes (a
    function's or USDT probe's arg0..arg5); ``ret`` is set for exit and return probes only;
    ``probe`` names the function (its symbol) or USDT probe (provider:name) that fired.
    ``value`` is the measurement that crossed the threshold: percent of one CPU (cpu), bytes
    (rss), threads, open fds; None for syscall/every/function/usdt.
    ``stopped`` means the probe itself sent SIGSTOP (``stop: kernel``): the daemon must take over
    and resume the target with SIGCONT. ``stack`` is the firing thread's registers and top of
    stack at the event, for probes that record them (None otherwise). ``at_load`` marks a
    sampled (rss, threads, fds) firing at the rule's first sample: the process was already above
    the threshold when it loaded. ``sender``: who sent a signal event's signal, when the probe saw
    it sent.
    """

    rule: str
    pid: int
    tid: int
    comm: str
    kind: Kind
    time_ns: int
    syscall: str | None = None
    probe: str | None = None
    args: tuple[int, ...] = ()
    ret: int | None = None
    value: int | None = None
    stopped: bool = False
    stack: UserStack | None = None
    at_load: bool = False
    sender: Sender | None = None
