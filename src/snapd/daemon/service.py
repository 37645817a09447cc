"""The daemon: rules -> probes -> admission -> dump worker -> catalog -> ctl. The only place that
wires the stages together.

The main thread owns the probes (bcc), the catalog (SQLite), the control socket and the rules
watch; it never blocks on a dump. The dump worker (:mod:`snapd.daemon.worker`) owns every ptrace
request. One turn of the loop: events -> :class:`~snapd.daemon.admission.Admission` ->
:class:`~snapd.daemon.dumps.Dumps` (reserve, queue); finished dumps -> ``Dumps.finish``
(publish, action.run); repeats that fell due; the rules directory; ctl requests; the loop
clients (:class:`~snapd.daemon.hooks.LoopClient`: the reports of published cores, ctl diffs),
whose fds the loop watches for them (:meth:`Daemon.watch_fd`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from types import FrameType

from snapd import sdnotify
from snapd.ctl.server import CtlServer
from snapd.daemon.admission import Admission, resume
from snapd.daemon.compare import Comparisons
from snapd.daemon.control import Control
from snapd.daemon.dumps import Dumps
from snapd.daemon.hooks import LoopClient
from snapd.daemon.journal import StopJournal
from snapd.daemon.limits import Limiter
from snapd.daemon.reports import Reports, ReportSettings
from snapd.daemon.rulesync import RULE_EVENTS, RuleSet
from snapd.daemon.worker import Worker
from snapd.probe import Probes
from snapd.store import Catalog, PauseSwitch, Retention
from snapd.sys.inotify import Watch

log = logging.getLogger("snapd")

POLL_MS = 50
DRAIN_S = 0.2  # a BPF program runs for microseconds: its last event is queued well within this
SETTLE_S = 0.1  # editors write files in several steps: wait for quiet before re-reading


class Daemon:
    def __init__(
        self,
        rules_dir: str,
        state_dir: str,
        socket_path: str,
        retention: Retention | None = None,
        cores_per_hour: int = 60,
        reports: ReportSettings | None = None,
    ) -> None:
        self.rules_dir = os.path.abspath(rules_dir)
        self.state_dir = os.path.abspath(state_dir)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.catalog = Catalog(self.state_dir, retention)
        self.switch = PauseSwitch(self.state_dir)
        self.journal = StopJournal(self.state_dir)
        for pid in self.journal.recover():
            log.warning("resumed pid %d, left stopped by a previous daemon (stop: kernel)", pid)
        self.probes = Probes()
        self.rules = RuleSet(self.rules_dir, self.probes, self.journal)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.worker = Worker(self.wake_w)
        self.worker.on_stop_cleared = self.journal.done
        self.admission = Admission(
            self.rules, self.switch, Limiter(per_hour=cores_per_hour), self.worker, self.journal
        )
        self.dumps = Dumps(self.catalog, self.worker, self.journal, self.rules)
        self.sel = selectors.DefaultSelector()
        settings = reports or ReportSettings()
        self.reports = Reports(self.catalog, settings, self, self._dumps_idle)
        self.dumps.published.append(self.reports.published)
        self.compare = Comparisons(self.catalog, settings, self)
        self.clients: list[LoopClient] = [self.reports, self.compare]
        self.control = Control(
            self.rules,
            self.probes,
            self.admission,
            self.dumps,
            self.switch,
            self.sync_rules,
            self._status,
            reports=self.reports,
            compare=self.compare,
        )
        self.stopping = False
        self.reload_requested = False
        self.dirty_at: float | None = None
        self.drain_until = 0.0  # time.monotonic(): keep reading the ring buffer after an unload
        self.watch = Watch(self.rules_dir, RULE_EVENTS)
        self.ctl = CtlServer(socket_path, self.control, self.catalog)
        self.sel.register(self.watch.fileno(), selectors.EVENT_READ, "watch")
        self.sel.register(self.ctl.fileno(), selectors.EVENT_READ, "ctl")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")

    def watch_fd(self, fd: int, ready: Callable[[], None]) -> None:
        """:class:`~snapd.daemon.hooks.FdWatch`: ``ready()`` when ``fd`` is readable."""
        self.sel.register(fd, selectors.EVENT_READ, ready)

    def unwatch_fd(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)

    def _dumps_idle(self) -> bool:
        return self.worker.busy is None and self.worker.waiting() == 0

    def sync_rules(self) -> None:
        """Make the loaded rules match the directory (:meth:`RuleSet.sync`)."""
        self.dirty_at = None
        if self.rules.sync():
            # A probe that ran just before the unload may have stopped its target (stop: kernel)
            # and queued the event: it must still be read (Probes releases events of unloaded
            # rules) even if no rule is left to make the loop poll.
            self.drain_until = time.monotonic() + DRAIN_S
        self._status()

    def _status(self) -> None:
        paused = " (paused)" if self.switch.paused else ""
        sdnotify.status(f"{len(self.rules.states)} rules, {self.dumps.cores} cores taken{paused}")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"s")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.worker.start()
        self.reports.resume_unfinished()
        self.sync_rules()
        sdnotify.ready(f"{len(self.rules.states)} rules loaded")
        log.info(
            "snapd daemon ready: %d rules from %s, cores in %s, control socket %s%s",
            len(self.rules.states),
            self.rules_dir,
            self.catalog.cores_dir,
            self.ctl.path,
            " (PAUSED: snapd ctl resume)" if self.switch.paused else "",
        )
        dog = sdnotify.watchdog_interval()
        next_dog = 0.0
        while not self.stopping:
            if self.rules.states or time.monotonic() < self.drain_until:
                for ev in self.probes.poll(POLL_MS):
                    admitted = self.admission.admit(ev)
                    if admitted is not None:
                        self.dumps.start(admitted)
                ready = self.sel.select(0)
            else:
                ready = self.sel.select(POLL_MS / 1000)
            for key, _ in ready:
                if key.data == "watch" and self.watch.drain():
                    self.dirty_at = time.monotonic()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif callable(key.data):
                    key.data()
            self.ctl.handle(0)
            for res in self.worker.take_results():
                self.dumps.finish(res)
            now = time.monotonic()
            self.dumps.run_due(now)
            for client in self.clients:
                client.tick(now)
            if self.reload_requested or (self.dirty_at and now - self.dirty_at >= SETTLE_S):
                self.reload_requested = False
                self.sync_rules()
            if dog and now >= next_dog:
                sdnotify.watchdog()
                next_dog = now + dog / 2
        return self.shutdown()

    def shutdown(self) -> int:
        sdnotify.stopping("shutting down")
        log.info("snapd daemon stopping")
        self.dumps.cancel_queued("cancelled: daemon stopped")
        self.worker.stop()  # the dump in flight finishes; its target is resumed either way
        for res in self.worker.take_results():
            self.dumps.finish(res)
        for client in self.clients:
            client.close()  # reports left running run again at the next start
        for pid in list(self.journal.entries):
            resume(pid, self.journal)
        # Unload first, then read what probes emitted meanwhile: a target stopped by an event
        # still in flight is released (Probes.close consumes only before it unloads).
        self.rules.unload_all()
        for ev in self.probes.poll(int(DRAIN_S * 1000)):
            self.admission.release(ev)
        self.probes.close()
        self.journal.close()  # clean: no probe left to stop anything, nothing left stopped
        self.ctl.close()
        self.watch.close()
        self.catalog.close()
        return 0
