"""The kill switch's persistent state: ``paused.json`` in the state directory.

``snapd ctl pause`` must survive a daemon restart (like DTrace's ``dtrace_destructive_disallow``
it is what an operator reaches for when snapshots themselves hurt). The file is replaced
atomically; if it exists but cannot be read or parsed, the switch reads as *paused*: a damaged
kill switch must fail safe.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

from snapd.atomicfile import write_atomic
from snapd.store import fsutil

PAUSE_FILE = "paused.json"


@dataclass(frozen=True)
class PauseState:
    paused: bool
    since: float = 0.0  # unix time of the last change (0: never changed)
    reason: str = ""
    uid: int = -1  # who asked

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class PauseSwitch:
    """``PauseSwitch(state_dir).paused``; ``.pause(reason, uid)``; ``.resume(uid)``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = os.path.abspath(os.fspath(state_dir))
        self.path = os.path.join(self.state_dir, PAUSE_FILE)

    def _dir(self) -> int:
        return fsutil.open_dir(self.state_dir, 0o700)

    def get(self) -> PauseState:
        try:
            fd = self._dir()
            try:
                data = fsutil.read_small(fd, PAUSE_FILE, 1 << 16)
            finally:
                os.close(fd)
            if data is None:
                return PauseState(paused=False)
            d = json.loads(data)
            return PauseState(
                paused=bool(d["paused"]),
                since=float(d.get("since", 0.0)),
                reason=str(d.get("reason", "")),
                uid=int(d.get("uid", -1)),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            return PauseState(
                paused=True,
                reason=f"{self.path} unreadable ({err}); delete it or run 'snapd ctl resume'",
            )

    @property
    def paused(self) -> bool:
        return self.get().paused

    def set(self, paused: bool, reason: str = "", uid: int = -1) -> PauseState:
        state = PauseState(paused=paused, since=time.time(), reason=reason[:500], uid=uid)
        fd = self._dir()
        try:
            write_atomic(PAUSE_FILE, json.dumps(state.to_dict()).encode() + b"\n", dir_fd=fd)
        finally:
            os.close(fd)
        return state

    def pause(self, reason: str = "", uid: int = -1) -> PauseState:
        return self.set(True, reason, uid)

    def resume(self, uid: int = -1) -> PauseState:
        return self.set(False, "", uid)
