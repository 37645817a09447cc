"""What `stop: kernel` left stopped, and resuming exactly that after a crash.

The probe stops the target with SIGSTOP before the daemon even hears of it, and records it in
the kernel at that instant: the ``stopped`` BPF map, pid -> the moment of the stop, pinned in bpffs per
state directory (:mod:`snapd.probe.pinned`). An entry goes when the daemon has resumed the
target (SIGCONT) or its dumper has taken it over with ptrace. A daemon killed at any instant,
even with the event still unread in its ring buffer, leaves the pinned map behind; the next
start resumes each process in it that is still the same process (started before the stop) and
still in the job-control stop the probe put it in (state T, no tracer), and nothing else: no
pid recycled since, no process someone else stopped on purpose.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal

from snapd import procfs
from snapd.errors import SnapdError
from snapd.probe import Probes, pinned

log = logging.getLogger("snapd")

LEGACY = "stopped.json"  # what daemons before the pinned map wrote: still honoured once


def _group_stopped(pid: int, stopped_at: int) -> bool:
    """Still the process that was stopped (it started no later than the stop, in /proc
    starttime ticks), in a job-control stop (fs/proc/array.c: "T (stopped)", not a ptrace
    stop "t"), with no tracer."""
    try:
        st = procfs.stat(pid)
        if st.starttime > stopped_at or st.state != "T":
            return False
        return int(procfs.status(pid).get("TracerPid", "0")) == 0
    except (SnapdError, ValueError):
        return False


class StopJournal:
    """``probes`` keeps the live record (its ``stopped`` map); this is the daemon's view of it."""

    def __init__(self, state_dir: str, probes: Probes) -> None:
        self.state_dir = state_dir
        self.probes = probes
        self.pin_dir = probes.pin_dir or pinned.pin_dir_for(state_dir)

    @property
    def entries(self) -> dict[int, int]:
        """Targets the probe stopped that are neither resumed nor taken over: pid -> when."""
        return self.probes.stopped()

    def done(self, pid: int) -> None:
        """``pid`` was resumed, or the dumper holds it now."""
        self.probes.forget_stopped(pid)

    def recover(self) -> list[int]:
        """SIGCONT what a previous daemon's probe stopped and nobody resumed (before this
        daemon's probes pin their own map); returns the pids resumed."""
        left: dict[int, int] = {}
        try:
            left = pinned.read(self.pin_dir)
        except OSError as err:
            log.error("cannot read what a previous daemon's probes stopped (%s): %s", self.pin_dir, err)
        legacy = os.path.join(self.state_dir, LEGACY)
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            with open(legacy) as f:
                data = json.load(f)
            for k, v in dict(data.get("stopped", data)).items():
                left.setdefault(int(k), int(v))
        resumed = []
        for pid, when in sorted(left.items()):
            if _group_stopped(pid, when):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    resumed.append(pid)
                    log.warning("resumed pid %d, left stopped by a previous daemon's stop: kernel probe", pid)
        with contextlib.suppress(OSError):
            pinned.unpin(self.pin_dir)
        with contextlib.suppress(OSError):
            os.unlink(legacy)
        return resumed
