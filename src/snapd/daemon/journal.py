"""What `stop: kernel` left stopped: a journal so that a restarted daemon resumes it.

The probe stops the target with SIGSTOP before the daemon even hears of it. Each such target is
written down (pid and start time, so a recycled pid is never signalled) until it has been sent
SIGCONT; at start-up every entry left by a killed daemon is resumed.

That alone leaves a window: a target the probe stopped whose event was still in the ring buffer
(not yet read, so not journalled) when the daemon died. The ring buffer dies with the daemon, so
nobody would ever hear of that target again and it would stay stopped for good. So the journal
also keeps the targets of every loaded ``stop: kernel`` rule ("armed"), cleared on a clean
shutdown; after an unclean one, each process matching an armed target that sits in a
job-control stop (state T, no tracer) is resumed too. The cost: a process that someone else
stopped on purpose and that matches a ``stop: kernel`` rule is resumed after a daemon crash;
leaving a production process halted for good is the worse failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
from typing import Any

from snapd import procfs
from snapd.atomicfile import write_atomic
from snapd.errors import SnapdError
from snapd.probe import targets
from snapd.rules.model import Target

log = logging.getLogger("snapd")


def _group_stopped(pid: int) -> bool:
    """In a job-control stop (fs/proc/array.c: "T (stopped)"), not a ptrace stop ("t")."""
    try:
        if procfs.stat(pid).state != "T":
            return False
        return int(procfs.status(pid).get("TracerPid", "0")) == 0
    except (SnapdError, ValueError):
        return False


class StopJournal:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "stopped.json")
        self.entries: dict[int, int] = {}  # pid -> starttime
        self.armed: dict[str, dict[str, Any]] = {}  # rule name -> its Target's fields
        # done() runs in the dump worker (Worker.on_stop_cleared) while the main thread may
        # add() or arm(): two writers of the same temp file would make one os.replace fail.
        self._lock = threading.Lock()

    def _save(self) -> None:
        # Not fsync'ed: what it records (stopped processes) cannot outlive the machine, only the
        # daemon, and the page cache survives that; the target waits, stopped, while we write.
        data = {"stopped": {str(k): v for k, v in self.entries.items()}, "armed": self.armed}
        write_atomic(self.path, json.dumps(data).encode(), sync=False)

    def add(self, pid: int) -> None:
        try:
            start = procfs.stat(pid).starttime
        except SnapdError:
            return
        with self._lock:
            self.entries[pid] = start
            self._save()

    def done(self, pid: int) -> None:
        with self._lock:
            if self.entries.pop(pid, None) is not None:
                self._save()

    def arm(self, name: str, target: Target) -> None:
        """A ``stop: kernel`` rule is about to be loaded: its probe may stop its targets.

        Kept until a clean shutdown, even if the rule is unloaded (cheap, and always safe)."""
        fields = dataclasses.asdict(target)
        with self._lock:
            if self.armed.get(name) != fields:
                self.armed[name] = fields
                self._save()

    def close(self) -> None:
        """Clean shutdown: every stopped target was resumed and no probe is attached."""
        with self._lock:
            self.entries = {}
            self.armed = {}
            self._save()

    def recover(self) -> list[int]:
        """SIGCONT every journalled target that is still the same process (returns their pids),
        and, after an unclean shutdown, every job-control-stopped process matching an armed
        target (logged here)."""
        try:
            with open(self.path) as f:
                data = json.load(f)
            if "stopped" not in data:  # the format before "armed"
                data = {"stopped": data}
            old = {int(k): int(v) for k, v in data["stopped"].items()}
            armed = {str(k): Target(**v) for k, v in data.get("armed", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            old, armed = {}, {}
        resumed = []
        for pid, start in old.items():
            with contextlib.suppress(SnapdError, ProcessLookupError):
                if procfs.stat(pid).starttime == start:
                    os.kill(pid, signal.SIGCONT)
                    resumed.append(pid)
        for name, target in armed.items():
            for pid in targets.scan(target, targets.target_cgroup(target)):
                if pid not in resumed and _group_stopped(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                        log.warning(
                            "resumed pid %d: stopped, and a target of stop: kernel rule %s when the "
                            "previous daemon died (its event may never have been read)",
                            pid,
                            name,
                        )
        with self._lock:
            self.entries = {}
            self.armed = {}
            self._save()
        return resumed
