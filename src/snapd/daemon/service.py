"""The daemon: rules -> probes -> admission -> dumper -> catalog -> ctl. The only place that
wires the stages together.

Start-up: the state dir's dumper lock (waiting, bounded, for a dumper a killed daemon left),
the catalog's recovery, the targets a previous daemon's probes left stopped, the dumper; then
the shared BPF program set compiles in a thread (seconds) while the loop already serves the
control socket (``ctl status``: ``starting``); once it is built every rule is armed and only
then is READY=1 sent. A rule dropped later is map data: armed within milliseconds.

The loop is event-driven: it sleeps in one selector on the ring buffer's fd (firings), the
control socket, the rules directory's inotify fd, the dumper's socket, a wake pipe (signals,
the compile thread) and the fds of its loop clients (:class:`~snapd.daemon.hooks.LoopClient`:
the reports of published cores, ctl diffs, the work after publication, uploads, metrics;
:meth:`Daemon.watch_fd`), with a timeout for the next timer (samplers, rescans, repeats, the
settle time of an edit, the watchdog, a client's next tick). One turn: events ->
:class:`~snapd.daemon.admission.Admission` -> :class:`~snapd.daemon.dumps.Dumps` (reserve,
queue); finished dumps -> ``Dumps.finish`` (publish, action.run); repeats that fell due; the
rules directory; ctl requests; the clients' ticks. It never blocks on a dump and never traces
anything: every ptrace request comes from the dumper process (:mod:`snapd.daemon.dumper`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from snapd import kernel, sdnotify
from snapd.core import CoreInfo
from snapd.ctl.server import CtlServer
from snapd.daemon.admission import Admission, resume
from snapd.daemon.aftercore import AfterCore
from snapd.daemon.compare import Comparisons
from snapd.daemon.config import DaemonConfig
from snapd.daemon.control import Control
from snapd.daemon.dumps import Dumps
from snapd.daemon.hooks import LoopClient
from snapd.daemon.journal import StopJournal
from snapd.daemon.limits import Limiter
from snapd.daemon.metricsfeed import MetricsFeed
from snapd.daemon.mutes import Mutes
from snapd.daemon.reports import Reports, ReportSettings
from snapd.daemon.request import CoreRequest
from snapd.daemon.rulesync import RULE_EVENTS, RuleSet
from snapd.daemon.uploads import Uploads
from snapd.daemon.worker import Worker, take_lock
from snapd.probe import Event, Kind, Probes, pinned
from snapd.probe.probes import RESCAN_INTERVAL_S
from snapd.ship.metrics import Metrics
from snapd.store import Catalog, Entry, PauseSwitch, Retention
from snapd.sys.inotify import Watch

log = logging.getLogger("snapd")

DRAIN_S = 0.2  # a BPF program runs for microseconds: its last event is queued well within this
SETTLE_S = 0.1  # editors write files in several steps: wait for quiet before re-reading
TICK_S = 1.0  # the longest sleep: idle ctl clients expire, the status line stays fresh


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n //= 1024
    return f"{n} B"


class Daemon:
    def __init__(
        self,
        rules_dir: str,
        state_dir: str,
        socket_path: str,
        retention: Retention | None = None,
        cores_per_hour: int = 60,
        *,
        reports: ReportSettings | None = None,
        config: DaemonConfig | None = None,
    ) -> None:
        self.config = config or DaemonConfig()
        self.rules_dir = os.path.abspath(rules_dir)
        self.state_dir = os.path.abspath(state_dir)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.lock_fd = take_lock(self.state_dir)
        self.catalog = Catalog(self.state_dir, retention)
        self.switch = PauseSwitch(self.state_dir)
        self.probes = Probes(pin_dir=pinned.pin_dir_for(self.state_dir))
        self.journal = StopJournal(self.state_dir, self.probes)
        self.journal.recover()
        self.rules = RuleSet(self.rules_dir, self.probes)
        self._targets_due = 0.0  # when the rules' targets are next compared with the log's
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.worker = Worker(self.state_dir, self.lock_fd)
        self.worker.on_stop_cleared = self.journal.done
        self.worker.on_started = lambda pid: self.probes.set_own(os.getpid(), pid)
        self.worker.on_socket = self._register_dumper
        self.mutes = Mutes(self.probes)
        self.admission = Admission(
            self.rules, self.switch, Limiter(per_hour=cores_per_hour), self.worker, self.journal, self.mutes
        )
        self.dumps = Dumps(self.catalog, self.worker, self.journal, self.rules, self.mutes)
        self.phase = "starting"
        self.sel = selectors.DefaultSelector()
        settings = reports or ReportSettings()
        self.reports = Reports(self.catalog, settings, self, self._dumps_idle)
        self.dumps.after_publish.append(self.reports.published)
        self.catalog.removed.append(self.reports.removed)
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
            lambda: self.phase,
            reports=self.reports,
            compare=self.compare,
        )
        self.clients += self._shipping()
        self.stopping = False
        self.reload_requested = False
        self.dirty_at: float | None = None
        self.compiled = threading.Event()
        self.watch = Watch(self.rules_dir, RULE_EVENTS)
        self.ctl = CtlServer(socket_path, self.control, self.catalog)
        self.sel.register(self.watch.fileno(), selectors.EVENT_READ, "watch")
        self.sel.register(self.ctl.fileno(), selectors.EVENT_READ, "ctl")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self._dumper_fd = -1
        self.worker.start()
        _oom_reset()

    def _register_dumper(self) -> None:
        if self._dumper_fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self._dumper_fd)
        self._dumper_fd = self.worker.fileno()
        if self._dumper_fd >= 0:
            self.sel.register(self._dumper_fd, selectors.EVENT_READ, "dumper")

    def watch_fd(self, fd: int, ready: Callable[[], None]) -> None:
        """:class:`~snapd.daemon.hooks.FdWatch`: ``ready()`` when ``fd`` is readable."""
        self.sel.register(fd, selectors.EVENT_READ, ready)

    def unwatch_fd(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)

    def _record_results(self) -> None:
        """Publish or fail what the dumper finished. Until then its row is 'pending' while the
        worker is no longer busy with it, so this runs before any ctl request is answered."""
        for res in self.worker.take_results():
            self.dumps.finish(res)

    def _dumps_idle(self) -> bool:
        return self.worker.busy is None and self.worker.waiting() == 0

    def _shipping(self) -> list[LoopClient]:
        """What runs beside the dumps: the work after publication, uploads, metrics."""
        cfg = self.config
        self.metrics = MetricsFeed(
            Metrics(), self.rules, textfile=cfg.metrics_textfile, interval=cfg.metrics_interval
        )
        self.after = AfterCore(self.catalog, cfg, self.metrics.metrics)
        self.catalog.removed.append(self.after.removed)
        self.uploads = Uploads(cfg.upload, self.catalog, self.metrics.metrics) if cfg.upload else None
        if self.uploads is not None:
            self.after.upload = self.uploads.submit
            self.catalog.shipping.uploads = True
        self.dumps.after_stage = self.after.first_stage
        self.dumps.after_publish.append(self._published)
        self.dumps.after_failure.append(lambda req, stage, why: self.metrics.dump_failed(req.rule, stage))
        self.metrics.refreshers.append(self.after.refresh_metrics)
        if self.uploads is not None:
            self.metrics.refreshers.append(self.uploads.refresh_metrics)
        self.control.metrics_text = self.metrics.render
        return [self.after, *([self.uploads] if self.uploads else []), self.metrics]

    def _published(self, entry: Entry, req: CoreRequest, info: CoreInfo) -> None:
        self.metrics.core_published(req.rule, info)
        self.after.published(entry)

    def sync_rules(self) -> None:
        """Make the loaded rules match the directory (:meth:`RuleSet.sync`); before the probes
        are built, only noted (it runs as soon as they are)."""
        if self.phase != "ready":
            self.reload_requested = True
            return
        self.dirty_at = None
        self.rules.sync()
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

    def _compile(self) -> None:
        with contextlib.suppress(Exception):  # kept in Probes.compile_error, reported on return
            self.probes.compile()
        self.compiled.set()
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"c")

    def _became_ready(self) -> None:
        t0 = self._t0
        if self.probes.compile_error is not None:
            log.error("%s: no rule can be armed (ctl snap still works)", self.probes.compile_error)
        else:
            self.sel.register(self.probes.fileno(), selectors.EVENT_READ, "probes")
            if self.probes.pinned is None:
                why = self.probes.pin_error or "no pin directory"
                self.rules.stop_kernel_refused = (
                    f"stop: kernel rules are refused: what they stop could not be recorded for "
                    f"recovery after a crash ({why}; mount bpffs: mount -t bpf bpf /sys/fs/bpf)"
                )
                log.error("%s", self.rules.stop_kernel_refused)
        self.phase = "ready"
        self.reload_requested = False
        self.sync_rules()
        sdnotify.ready(f"{len(self.rules.states)} rules loaded")
        log.info(
            "snapd daemon ready in %.1f s: %d rules armed from %s, cores in %s, control socket %s%s",
            time.monotonic() - t0,
            len(self.rules.states),
            self.rules_dir,
            self.catalog.cores_dir,
            self.ctl.path,
            " (PAUSED: snapd ctl resume)" if self.switch.paused else "",
        )

    def _on_event(self, ev: Event) -> None:
        if ev.at_load and ev.value is not None:
            value = _size(ev.value) if ev.kind is Kind.RSS else str(ev.value)
            log.warning(
                "rule %s fires at load: pid %d (%s) is already above its %s threshold (%s)",
                ev.rule,
                ev.pid,
                ev.comm,
                ev.kind.value,
                value,
            )
        admitted = self.admission.admit(ev)
        if admitted is not None:
            self.dumps.start(admitted)

    def _timeout(self, next_dog: float | None) -> float:
        now = time.monotonic()
        due = [now + TICK_S]
        if self.phase == "ready" and (w := self.probes.next_wakeup()) is not None:
            due.append(w)
        if (r := self.dumps.repeats.next_due()) is not None:
            due.append(r)
        if self.dirty_at is not None:
            due.append(self.dirty_at + SETTLE_S)
        if next_dog is not None:
            due.append(next_dog)
        due += [t for c in self.clients if (t := c.next_tick()) is not None]
        return max(0.0, min(due) - now)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self._t0 = time.monotonic()
        self.reports.resume_unfinished()
        if self.uploads is not None:
            self.uploads.start()
            up = self.config.upload
            assert up is not None
            log.info("uploading every core as a bundle to %s, bucket %s", up.endpoint or "AWS S3", up.bucket)
        elif (queued := self.catalog.shipping.backlog()[0]) > 0:
            log.warning("%d core(s) wait for an upload, but the configuration has no upload: section", queued)
        self.after.resume()
        log.info("kernel %s: %s", os.uname().release, kernel.describe())
        sdnotify.status("starting: building the BPF probes")
        log.info("snapd daemon starting: building the BPF probes (control socket %s answers)", self.ctl.path)
        threading.Thread(target=self._compile, name="snapd-compile", daemon=True).start()
        dog = sdnotify.watchdog_interval()
        next_dog = time.monotonic() if dog else None
        while not self.stopping:
            for key, _ in self.sel.select(self._timeout(next_dog)):
                if key.data == "watch" and self.watch.drain():
                    self.dirty_at = time.monotonic()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif key.data == "dumper":
                    self.worker.on_readable()
                elif callable(key.data):
                    key.data()
            self._record_results()  # before the ctl requests: idle in `status` means recorded
            if self.phase == "starting" and self.compiled.is_set():
                self._became_ready()
            self.ctl.handle(0)
            if self.phase == "ready":
                for ev in self.probes.service():
                    self._on_event(ev)
                for line in self.probes.take_problems():
                    log.warning("%s", line)
                if (t := time.monotonic()) >= self._targets_due:  # the probes rescan as often
                    self._targets_due = t + RESCAN_INTERVAL_S
                    for line in self.rules.note_targets():
                        log.info("%s", line)
            now = time.monotonic()
            self.dumps.run_due(now)
            self._record_results()  # a dumper that died as a job was sent (Worker.submit)
            for client in self.clients:
                client.tick(now)
            if self.phase == "ready" and (
                self.reload_requested or (self.dirty_at and now - self.dirty_at >= SETTLE_S)
            ):
                self.reload_requested = False
                self.sync_rules()
            if dog and next_dog is not None and now >= next_dog:
                sdnotify.watchdog()
                next_dog = now + dog / 2
        return self.shutdown()

    def shutdown(self) -> int:
        self.phase = "stopping"
        sdnotify.stopping("shutting down")
        log.info("snapd daemon stopping")
        self.dumps.cancel_queued("cancelled: daemon stopped")
        self.worker.stop()  # the dump in flight finishes; its target is resumed either way
        self._record_results()
        for client in self.clients:
            client.close()  # reports left running run again at the next start
        self.compiled.wait(60)  # a compile in flight holds the probes
        for pid in list(self.journal.entries):
            resume(pid, self.journal)
        # Unload first, then read what probes emitted meanwhile: a target stopped by an event
        # still in flight is released (Probes.close consumes only before it unloads).
        self.rules.unload_all()
        for ev in self.probes.poll(int(DRAIN_S * 1000)):
            self.admission.release(ev)
        self.probes.close()  # clean: no probe left to stop anything, nothing left stopped: unpinned
        self.ctl.close()
        self.watch.close()
        self.catalog.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
        return 0


def _oom_reset() -> None:
    """The unit gives the daemon oom_score_adj -1000 for its dumper to inherit (lowering it
    needs CAP_SYS_RESOURCE); the daemon itself, whose death harms no target, goes back to 0, and
    so do the programs it runs (action.run)."""
    try:
        with open("/proc/self/oom_score_adj", "r+") as f:
            if int(f.read() or 0) < 0:
                f.seek(0)
                f.write("0")
    except (OSError, ValueError):
        pass
