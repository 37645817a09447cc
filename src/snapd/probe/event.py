"""Event: one firing of a rule, as the probe layer hands it to the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    SYSCALL = "syscall"
    EVERY = "every"
    CPU = "cpu"
    RSS = "rss"
    THREADS = "threads"
    FDS = "fds"


@dataclass(frozen=True)
class Event:
    """A rule fired for process ``pid`` (thread ``tid``).

    ``time_ns`` is CLOCK_MONOTONIC (``time.monotonic_ns()``; bpf_ktime_get_ns in the kernel).
    ``args`` are the syscall's raw arguments as signed 64-bit values, as many as it takes;
    ``ret`` is set for exit probes only. ``value`` is the measurement that crossed the threshold:
    percent of one CPU (cpu), bytes (rss), threads, open fds; None for syscall/every.
    ``stopped`` means the probe itself sent SIGSTOP (``stop: kernel``): the daemon must take over
    and resume the target with SIGCONT.
    """

    rule: str
    pid: int
    tid: int
    comm: str
    kind: str
    syscall: str | None
    args: tuple[int, ...]
    ret: int | None
    value: int | None
    time_ns: int
    stopped: bool = False
