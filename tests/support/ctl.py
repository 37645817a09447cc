"""A control server without the daemon: a handler that answers like the daemon, cores taken with
the stand-in writer (support.standin)."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from snapd.ctl import CtlServer
from snapd.errors import SnapdError
from snapd.store import Catalog, Entry, PauseSwitch
from support.standin import write_like_core_writer


def take(catalog: Catalog, rule: str = "demo", pid: int = 100, **kw: Any) -> Entry:
    kw.setdefault("comm", "victim")
    kw.setdefault("exe", "/usr/bin/victim")
    kw.setdefault("trigger", {"syscall": "openat", "ret": -13})
    e = catalog.reserve(rule=rule, pid=pid, **kw)
    info = dataclasses.replace(write_like_core_writer(e.path, pid=pid), content=e.content)
    return catalog.publish(e.id, info)


class DaemonLikeHandler:
    """Implements snapd.ctl.CtlHandler the way the daemon will: pause persisted in the state
    dir, snap answered later from a worker thread."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.switch = PauseSwitch(catalog.state_dir)
        self.reloads = 0
        self.snap_gate = threading.Event()
        self.snap_gate.set()
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.fail_with: BaseException | None = None

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def status(self) -> Any:
        self._maybe_fail()
        st = self.switch.get()
        return {
            "paused": st.paused,
            "pause_reason": st.reason,
            "rules": 1,
            "cores": len(self.catalog.list()),
            "events": {"seen": 3, "suppressed": 1},
        }

    def rules(self, matches: bool = False) -> Any:
        return [{"name": "demo", "file": "/etc/snapd-cores/rules.d/demo.yaml", "state": "attached"}]

    def metrics(self) -> Any:
        return "# HELP snapd_cores_total Cores published\n# TYPE snapd_cores_total counter\n"

    def snap(self, pid: int, content: str | None, snapshot: str | None, uid: int) -> Any:
        if pid <= 0:
            raise SnapdError(f"pid {pid}: no such process")

        def work() -> dict[str, Any]:
            self.snap_gate.wait(30)
            return take(self.catalog, rule="on-demand", pid=pid, content=content or "default").to_dict(
                context=False
            )

        fut: Future[dict[str, Any]] = self.pool.submit(work)
        return fut

    def pause(self, reason: str, uid: int) -> Any:
        return self.switch.pause(reason, uid).to_dict()

    def resume(self, uid: int) -> Any:
        return self.switch.resume(uid).to_dict()

    def reload(self, uid: int) -> Any:
        self.reloads += 1
        return {"reloaded": True, "rules": 1}


@dataclasses.dataclass
class Served:
    """A CtlServer on a real socket, served from a thread (the ``serve`` fixture)."""

    server: CtlServer
    catalog: Catalog
    handler: DaemonLikeHandler
    path: str
