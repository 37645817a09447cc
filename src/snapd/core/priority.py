"""CPU priorities of the copy while a target is halted."""

from __future__ import annotations

import contextlib
import functools
import os
import threading

BOOST = -10  # nice value of the reader and O_DIRECT writers while a target is halted
UNBOOST = 10  # nice value of buffered writers while a target is halted


class Nice:
    """Run the calling thread at nice ``value`` while a target is halted; :meth:`stop`
    (idempotent) restores the old value, as soon as the target runs again.

    On a busy machine the copy out of a halted target is CPU-bound (process_vm_readv copies in
    the kernel) and competes with everything else, while the target, halted, uses nothing: the
    freeze is shortened by giving the reader (and the O_DIRECT writers, which need little CPU
    but promptly) the target's share, nice -10, and by letting buffered writers, which compete
    with the reader for a CPU and for fresh memory, have only what nobody else wants, nice +10.
    setpriority(2) on a thread id affects only that thread. Lowering a nice value needs
    CAP_SYS_NICE, so without it nothing changes (a raised value could not be restored).
    """

    def __init__(self, value: int) -> None:
        self.tid = threading.get_native_id()
        self.old: int | None = None
        if not _may_renice():
            return
        with contextlib.suppress(OSError):
            old = os.getpriority(os.PRIO_PROCESS, self.tid)
            if old != value:
                os.setpriority(os.PRIO_PROCESS, self.tid, value)
                self.old = old

    @property
    def active(self) -> bool:
        return self.old is not None

    def stop(self) -> None:
        if self.old is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.tid, self.old)
            self.old = None


def boost() -> Nice:
    """The reader's priority while a target is halted."""
    return Nice(BOOST)


@functools.cache
def _may_renice() -> bool:
    """CAP_SYS_NICE (bit 23) in the effective set (capabilities(7))."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 23 & 1)
    except (OSError, ValueError):
        pass
    return False
