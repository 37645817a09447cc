"""The daemon: rules -> probes -> (limits) -> dump worker -> catalog -> ctl. The only place that
wires the stages together.

The main thread owns the probes (bcc), the catalog (SQLite), the control socket and the rules
watch; it never blocks on a dump. The dump worker (:mod:`snapd.daemon.worker`) owns every ptrace
request. A target stopped by a probe (``stop: kernel``) is either handed to an idle worker at
once or resumed with SIGCONT at once: it never waits in a queue.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import selectors
import signal
import sys
import time
from concurrent.futures import Future
from types import FrameType
from typing import Any, NamedTuple

from snapd import kernel, procfs, sdnotify
from snapd.content import parse_spec
from snapd.ctl.server import CtlServer
from snapd.daemon import ruledir
from snapd.daemon.inotify import Watch
from snapd.daemon.journal import StopJournal
from snapd.daemon.limits import Limiter, RuleState
from snapd.daemon.worker import Job, Result, Worker
from snapd.errors import SnapdError
from snapd.probe import Event, Probes
from snapd.rules import RuleError
from snapd.rules.model import StopMode
from snapd.store import Catalog, PauseSwitch, Retention
from snapd.store.context import capture
from snapd.text import SafeFormatter

log = logging.getLogger("snapd")

DEFAULT_RULES = "/etc/snapd-cores/rules.d"
DEFAULT_STATE = "/var/lib/snapd-cores"
DEFAULT_SOCKET = "/run/snapd-cores/ctl.sock"
POLL_MS = 50
DRAIN_S = 0.2  # a BPF program runs for microseconds: its last event is queued well within this
SETTLE_S = 0.1  # editors write files in several steps: wait for quiet before re-reading
ON_DEMAND_RULE = "ctl-snap"
RUN_TIMEOUT_S = 60.0
_PLACEHOLDER = re.compile(r"\{(core|rule|pid|comm)\}")


class Repeat(NamedTuple):
    """A repeat core (action.core.repeat > 1) waiting for its interval."""

    due: float  # time.monotonic()
    n: int  # 2..repeat
    start: int  # the process's start time at the firing: a recycled pid is not dumped
    digest: str  # the rule file's content at the firing
    args: tuple[str, int, int | None, dict[str, Any], str, str, str, bool]  # for Daemon._reserve


class Daemon:
    def __init__(
        self,
        rules_dir: str,
        state_dir: str,
        socket_path: str,
        retention: Retention | None = None,
        cores_per_hour: int = 60,
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
        self.limiter = Limiter(per_hour=cores_per_hour)
        self.states: dict[str, RuleState] = {}
        self.bad: dict[str, tuple[str, ...]] = {}  # path -> errors, as last logged
        self.parsed: dict[Any, ruledir.RuleFile] = {}  # ruledir's cache of parsed files
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.worker = Worker(self.wake_w)
        self.worker.on_stop_cleared = self.journal.done
        self.futures: dict[int, Future[Any]] = {}
        self.scheduled: list[Repeat] = []  # repeat cores not reserved yet
        self.events = 0
        self.cores = 0
        self.failed = 0
        self.stopping = False
        self.reload_requested = False
        self.dirty_at: float | None = None
        self.drain_until = 0.0  # time.monotonic(): keep reading the ring buffer after an unload
        self.watch = Watch(self.rules_dir)
        self.ctl = CtlServer(socket_path, self, self.catalog)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.watch.fileno(), selectors.EVENT_READ, "watch")
        self.sel.register(self.ctl.fileno(), selectors.EVENT_READ, "ctl")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")

    # --- rules --------------------------------------------------------------------------------

    def sync_rules(self) -> None:
        """Make the loaded rules match the directory; log each bad file once per content."""
        self.dirty_at = None
        dir_error: tuple[str, ...] = ()
        try:
            files = ruledir.scan(self.rules_dir, cache=self.parsed)
        except RuleError as err:
            # An unusable or untrusted directory: no rule from it stays loaded.
            dir_error = (str(err),)
            if self.bad.get(self.rules_dir) != dir_error:
                log.error("%s", err)
            files = {}
        # What was logged before this pass: a probe load error (below) is not in the file's
        # own errors, so comparing with self.bad as it is being rebuilt logged it again on
        # every change anywhere in the directory.
        logged = dict(self.bad)
        desired: dict[str, ruledir.RuleFile] = {}
        for path, f in files.items():
            errors = f.errors
            if f.rule is not None and f.rule.name in desired:
                other = desired[f.rule.name].path
                errors = (f"{path}:1:1: rule name '{f.rule.name}' is already used by {other}",)
            elif f.rule is not None and f.rule.target.pid == os.getpid():
                # The probes leave the daemon out of every other selector (targets.scan), but
                # a pid is taken as given: with stop: kernel the probe would SIGSTOP the daemon
                # itself (at its next write) and nothing would ever resume it.
                errors = (
                    f"{path}:1:1: target pid {os.getpid()} is this snapd daemon: it cannot stop or "
                    "snapshot itself",
                )
            elif f.rule is not None:
                desired[f.rule.name] = f
            if errors and logged.get(path) != errors:
                for e in errors:
                    log.error("%s", e)
            if errors:
                self.bad[path] = errors
            else:
                self.bad.pop(path, None)
        for path in list(self.bad):
            if path not in files:
                del self.bad[path]
        if dir_error:
            self.bad[self.rules_dir] = dir_error
        for name, st in list(self.states.items()):
            want = desired.get(name)
            if want is None or want.digest != st.digest:
                self.probes.unload(name)
                # A probe that ran just before the unload may have stopped its target
                # (stop: kernel) and queued the event; it must still be read (Probes releases
                # events of unloaded rules) even if no rule is left to make the loop poll.
                self.drain_until = time.monotonic() + DRAIN_S
                del self.states[name]
                log.info("rule %s unloaded", name)
        for name, f in desired.items():
            if name in self.states or f.rule is None:
                continue
            if f.rule.action.stop == StopMode.KERNEL:
                self.journal.arm(name, f.rule.target)  # before the probe can stop anything
            try:
                self.probes.load(f.rule)
            except RuleError as err:
                if logged.get(f.path) != (str(err),):
                    log.error("%s", err)
                self.bad[f.path] = (str(err),)
                continue
            self.states[name] = RuleState(f.rule, f.digest)
            log.info("rule %s loaded from %s", name, f.path)
        self._status()

    # --- events -------------------------------------------------------------------------------

    def on_event(self, ev: Event) -> None:
        self.events += 1
        st = self.states.get(ev.rule)
        if st is None:
            self._release(ev)
            return
        st.seen += 1
        try:
            start = procfs.stat(ev.pid).starttime
        except SnapdError:
            st.suppressed["gone"] += 1
            return
        now = time.monotonic()
        busy = self.worker.waiting() + (1 if self.worker.busy else 0)
        reason = "paused" if self.switch.paused else self.limiter.admit(st, (ev.pid, start), now, busy)
        if reason is None and ev.stopped and busy:
            reason = "busy"  # a stopped target never waits for another dump
        if reason:
            st.suppressed[reason] += 1
            self._release(ev)
            return
        if ev.stopped:
            self.journal.add(ev.pid)
        self.limiter.taken(st, (ev.pid, start), now)
        trigger = {
            "kind": ev.kind,
            "syscall": ev.syscall,
            "args": list(ev.args),
            "ret": ev.ret,
            "value": ev.value,
            "tid": ev.tid,
        }
        core = st.rule.action.core
        job = self._reserve(
            st.rule.name,
            ev.pid,
            ev.tid,
            trigger,
            str(core.content),
            st.rule.action.snapshot.value,
            core.name,
            ev.stopped,
        )
        if job is None:
            self._release(ev)
            st.cores -= 1
            st.failed += 1
            return
        job.extra["repeat"] = 1
        self.worker.submit(job)
        # Repeat cores are reserved in the catalog when they fall due, not now: an entry's time
        # and its /proc context must be those of its own snapshot, not of the firing (reserving
        # them all at once stamped three cores taken seconds apart with the same time). Nothing
        # is reserved for them yet, so pause/shutdown can simply forget them.
        for n in range(1, core.repeat):
            self.scheduled.append(
                Repeat(
                    now + n * core.interval_ns / 1e9,
                    n + 1,
                    start,
                    st.digest,
                    (
                        st.rule.name,
                        ev.pid,
                        ev.tid,
                        trigger,
                        str(core.content),
                        st.rule.action.snapshot.value,
                        core.name,
                        False,
                    ),
                )
            )

    def _due(self, rep: Repeat) -> None:
        """A repeat core fell due: reserve and queue it, if its rule is still loaded (a rule
        deleted or edited takes no more cores) and its process is still the same one."""
        st = self.states.get(rep.args[0])
        if st is None or st.digest != rep.digest:
            log.info("rule %s: changed or removed: repeat core %d dropped", rep.args[0], rep.n)
            return
        pid = rep.args[1]
        try:
            same = procfs.stat(pid).starttime == rep.start
        except SnapdError:
            same = False
        if not same:
            log.info("rule %s: pid %d exited before repeat core %d", rep.args[0], pid, rep.n)
            return
        job = self._reserve(*rep.args)
        if job is not None:
            job.extra["repeat"] = rep.n
            self.worker.submit(job)

    def _release(self, ev: Event) -> None:
        """A probe-stopped target we will not dump: resume it now."""
        if ev.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ev.pid, signal.SIGCONT)
            self.journal.done(ev.pid)  # journalled if admitted before its reservation failed

    def _reserve(
        self,
        rule: str,
        pid: int,
        tid: int | None,
        trigger: dict[str, Any],
        content: str,
        snapshot: str,
        template: str,
        kernel_stopped: bool,
    ) -> Job | None:
        try:
            ctx = capture(pid)  # while the process is alive: fds, limits, maps, cgroup...
            entry = self.catalog.reserve(
                rule=rule,
                pid=pid,
                trigger=trigger,
                content=content,
                snapshot=snapshot,
                template=template,
                context=ctx,
            )
        except (SnapdError, OSError) as err:
            log.error("rule %s: pid %d: cannot start a core: %s", rule, pid, err)
            return None
        return Job(entry.id, entry.path, pid, tid, content, snapshot, rule, kernel_stopped)

    def _fail_entry(self, entry_id: int, why: str) -> None:
        """Mark a catalog entry failed; a catalog that cannot write (disk full) is logged, not
        raised: it must not stop the daemon, nor a shutdown before it resumes its targets."""
        try:
            self.catalog.fail(entry_id, why)
        except SnapdError as err:
            # Left pending: never listed; recovery fails it (and removes its file) at next start.
            log.error("core %d: cannot record that it failed (%s): %s", entry_id, why, err)

    def on_result(self, res: Result) -> None:
        job = res.job
        if res.info is not None:
            try:
                entry = self.catalog.publish(job.entry_id, res.info)
            except SnapdError as err:
                # E.g. the core took the last free blocks and SQLite cannot commit: this raised
                # out of the main loop and the daemon exited. The core is lost, the daemon is not.
                res = Result(job, None, f"cannot record the core in the catalog: {err}")
        st = self.states.get(job.rule)
        fut = self.futures.pop(job.entry_id, None)
        if res.info is None:
            self._fail_entry(job.entry_id, res.error)
            self.failed += 1
            if st:
                st.failed += 1
                st.cores -= 1  # a failed attempt does not use up max_cores
            log.error("rule %s: pid %d: core failed: %s", job.rule, job.pid, res.error)
            if fut:
                fut.set_exception(SnapdError(res.error))
            return
        self.cores += 1
        info = res.info
        note = f" (fork not used: {info.fallback})" if info.fallback else ""
        log.info(
            "rule %s: pid %d (%s): core %s, %d MiB on disk, froze %.1f ms, %s%s",
            job.rule,
            job.pid,
            info.comm,
            entry.path,
            info.disk_bytes >> 20,
            info.freeze_seconds * 1e3,
            info.snapshot,
            note,
        )
        if fut:
            fut.set_result(entry.to_dict(context=False))
        if st and st.rule.action.run:
            self._run_action(st.rule.action.run, entry.path, job, info.comm)

    def _run_action(self, argv: tuple[str, ...], core: str, job: Job, comm: str) -> None:
        """action.run: an argv (no shell) with {core} {rule} {pid} filled in, output logged."""
        import subprocess
        import threading

        # The placeholders the rule loader accepts (snapd.rules.loader.RUN_PLACEHOLDERS),
        # replaced literally, every other character kept: str.format_map raised in the main
        # loop, killing the daemon, on {comm} (accepted by the loader, missing here) and on a
        # lone "{" or "}" (which the loader lets through).
        subst = {"core": core, "rule": job.rule, "pid": str(job.pid), "comm": comm}
        args = [_PLACEHOLDER.sub(lambda m: subst[m.group(1)], a) for a in argv]

        def go() -> None:
            try:
                r = subprocess.run(
                    args,
                    capture_output=True,
                    text=True,
                    timeout=RUN_TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
                out = (r.stdout + r.stderr).strip().replace("\n", " | ")[:2000]
                log.info(
                    "rule %s: run %s: exit %d%s", job.rule, args[0], r.returncode, f": {out}" if out else ""
                )
            except (OSError, subprocess.SubprocessError) as err:
                log.error("rule %s: run %s: %s", job.rule, args[0], err)

        threading.Thread(target=go, name="snapd-run", daemon=True).start()

    # --- ctl ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        suppressed: dict[str, int] = {}
        for st in self.states.values():
            for k, v in st.suppressed.items():
                suppressed[k] = suppressed.get(k, 0) + v
        busy = self.worker.busy
        return {
            "rules": len(self.states),
            "bad_rule_files": len(self.bad),
            "probes": self.probes.stats(),
            "events": self.events,
            "suppressed": suppressed,
            "cores": self.cores,
            "failed": self.failed,
            "paused": self.switch.get().to_dict(),
            "dumping": {"pid": busy.pid, "rule": busy.rule} if busy else None,
            "queued": self.worker.waiting(),
            "kernel": kernel.summary(),
        }

    def rules(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [st.to_dict() for st in self.states.values()]
        out += [{"path": p, "errors": list(e)} for p, e in self.bad.items()]
        return out

    def snap(self, pid: int, content: str | None, uid: int) -> Future[Any]:
        if self.switch.paused:
            raise SnapdError("snapshots are paused (snapd ctl resume)")
        if pid == os.getpid():
            raise SnapdError(f"pid {pid} is this snapd daemon: it cannot snapshot itself")
        spec = parse_spec(content or "default")
        try:
            procfs.stat(pid)
        except SnapdError as err:
            raise SnapdError(str(err)) from err
        job = self._reserve(
            ON_DEMAND_RULE,
            pid,
            None,
            {"kind": "ctl", "uid": uid},
            str(spec),
            "frozen",
            "core.%r.%p.%t",
            False,
        )
        if job is None:
            raise SnapdError(f"pid {pid}: cannot start a core (see the daemon's log)")
        fut: Future[Any] = Future()
        self.futures[job.entry_id] = fut
        self.worker.submit(job)
        return fut

    def pause(self, reason: str, uid: int) -> dict[str, object]:
        state = self.switch.pause(reason, uid)
        for job in self.worker.drop_queued():
            if job.kernel_stopped:
                # The probe stopped it and only the worker would have resumed it: a job
                # submitted in this loop iteration may not have been picked up yet.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(job.pid, signal.SIGCONT)
                self.journal.done(job.pid)
            self._fail_entry(job.entry_id, "cancelled: snapshots paused")
            fut = self.futures.pop(job.entry_id, None)
            if fut:
                fut.set_exception(SnapdError("cancelled: snapshots paused"))
        self.scheduled.clear()
        log.warning("snapshots paused by uid %d%s", uid, f": {reason}" if reason else "")
        self._status()
        return state.to_dict()

    def resume(self, uid: int) -> dict[str, object]:
        state = self.switch.resume(uid)
        log.warning("snapshots resumed by uid %d", uid)
        self._status()
        return state.to_dict()

    def reload(self, uid: int) -> dict[str, Any]:
        self.sync_rules()
        return {"rules": len(self.states), "bad_rule_files": len(self.bad)}

    # --- loop ---------------------------------------------------------------------------------

    def _status(self) -> None:
        paused = " (paused)" if self.switch.paused else ""
        sdnotify.status(f"{len(self.states)} rules, {self.cores} cores taken{paused}")

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
        log.info("kernel %s: %s", os.uname().release, kernel.describe())
        self.sync_rules()
        sdnotify.ready(f"{len(self.states)} rules loaded")
        log.info(
            "snapd daemon ready: %d rules from %s, cores in %s, control socket %s%s",
            len(self.states),
            self.rules_dir,
            self.catalog.cores_dir,
            self.ctl.path,
            " (PAUSED: snapd ctl resume)" if self.switch.paused else "",
        )
        dog = sdnotify.watchdog_interval()
        next_dog = 0.0
        while not self.stopping:
            if self.states or time.monotonic() < self.drain_until:
                for ev in self.probes.poll(POLL_MS):
                    self.on_event(ev)
                ready = self.sel.select(0)
            else:
                ready = self.sel.select(POLL_MS / 1000)
            for key, _ in ready:
                if key.data == "watch" and self.watch.drain():
                    self.dirty_at = time.monotonic()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
            self.ctl.handle(0)
            for res in self.worker.take_results():
                self.on_result(res)
            now = time.monotonic()
            due = [r for r in self.scheduled if r.due <= now]
            if due:
                self.scheduled = [r for r in self.scheduled if r.due > now]
                for rep in due:
                    self._due(rep)
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
        for job in self.worker.drop_queued():
            self._fail_entry(job.entry_id, "cancelled: daemon stopped")
        self.scheduled.clear()  # repeat cores not reserved yet: nothing to fail
        self.worker.stop()  # the dump in flight finishes; its target is resumed either way
        for res in self.worker.take_results():
            self.on_result(res)
        for pid in list(self.journal.entries):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self.journal.done(pid)
        # Unload first, then read what probes emitted meanwhile: a target stopped by an event
        # still in flight is released (Probes.close consumes only before it unloads).
        for name in list(self.states):
            self.probes.unload(name)
        for ev in self.probes.poll(int(DRAIN_S * 1000)):
            self._release(ev)
        self.probes.close()
        self.journal.close()  # clean: no probe left to stop anything, nothing left stopped
        self.ctl.close()
        self.watch.close()
        self.catalog.close()
        return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="snapd daemon", description="Run the snapshot daemon (foreground).")
    p.add_argument("--rules", default=DEFAULT_RULES, help=f"rules directory (default {DEFAULT_RULES})")
    p.add_argument("--state", default=DEFAULT_STATE, help=f"catalog and cores (default {DEFAULT_STATE})")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--max-use", help="retention: most disk the cores may use (e.g. 4G, 10%%)")
    p.add_argument("--keep-free", help="retention: disk to leave free (e.g. 1G, 15%%)")
    p.add_argument("--max-age", help="retention: delete cores older than this (e.g. 7d)")
    p.add_argument("--cores-per-hour", type=int, default=60, help="daemon-wide cap (default 60)")
    p.add_argument("--foreground", action="store_true", help="accepted for clarity; always foreground")
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(levelname)s: %(message)s"))  # comm etc. are the target's
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if os.geteuid() != 0:
        print("snapd daemon: must run as root (eBPF, ptrace of other users' processes)", file=sys.stderr)
        return 1
    conf = {
        k: v
        for k, v in (("MaxUse", args.max_use), ("KeepFree", args.keep_free), ("MaxAge", args.max_age))
        if v
    }
    retention = Retention.from_mapping(conf) if conf else None
    os.makedirs(os.path.dirname(os.path.abspath(args.socket)), mode=0o755, exist_ok=True)
    if not os.path.isdir(args.rules):
        print(
            f"snapd daemon: {args.rules}: no such rules directory; create it (mkdir -p) and "
            "drop rule files there",
            file=sys.stderr,
        )
        return 1
    d = Daemon(args.rules, args.state, args.socket, retention, args.cores_per_hour)
    return d.run()
