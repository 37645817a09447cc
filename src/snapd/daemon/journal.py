"""What `stop: kernel` left stopped: a journal so that a restarted daemon resumes it.

The probe stops the target with SIGSTOP before the daemon even hears of it. Each such target is
written down (pid and start time, so a recycled pid is never signalled) until it has been sent
SIGCONT; at start-up every entry left by a killed daemon is resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

from snapd import procfs
from snapd.errors import SnapdError


class StopJournal:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "stopped.json")
        self.entries: dict[int, int] = {}  # pid -> starttime

    def _save(self) -> None:
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({str(k): v for k, v in self.entries.items()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add(self, pid: int) -> None:
        try:
            self.entries[pid] = procfs.stat(pid).starttime
        except SnapdError:
            return
        self._save()

    def done(self, pid: int) -> None:
        if self.entries.pop(pid, None) is not None:
            self._save()

    def recover(self) -> list[int]:
        """SIGCONT every journalled target that is still the same process; returns their pids."""
        try:
            with open(self.path) as f:
                old = {int(k): int(v) for k, v in json.load(f).items()}
        except (OSError, ValueError, AttributeError):
            old = {}
        resumed = []
        for pid, start in old.items():
            with contextlib.suppress(SnapdError, ProcessLookupError):
                if procfs.stat(pid).starttime == start:
                    os.kill(pid, signal.SIGCONT)
                    resumed.append(pid)
        self.entries = {}
        self._save()
        return resumed
