"""The work on a core after it is published (issue 13), as a loop part: its binaries kept in the
ELF cache, the core compressed at rest, its bundle written and handed to the uploader.

The target was resumed before any of this starts, so none of it lengthens a freeze. Every step
runs in a bounded child (:mod:`snapd.ship.aftercore` under snapd.sandbox: low priority, a
deadline scaled to the core, an address-space limit, writes confined by Landlock to the store's
directories), one at a time per lane: ``capture`` (quick, so that binaries are kept while the
process still maps them) apart from ``store`` (compression and bundles: seconds of CPU for a big
core). The loop only starts children and takes in their answers; the catalog's shipping rows
(snapd.store.shipping) say where each core is, so a restart resumes the work.

Failures are one log line each: a core not compressed stays plain; a bundle that cannot be
written (the disk is full) is tried again later, with backoff, for as long as the entry lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from snapd import procfs
from snapd.daemon.config import Compression, DaemonConfig
from snapd.errors import SnapdError
from snapd.sandbox import BoundedRun, Failure, Limits, Result
from snapd.ship.elfcache import ElfCache
from snapd.ship.metrics import Metrics
from snapd.store import Catalog, Entry
from snapd.store.errors import StoreError
from snapd.store.shipping import CAPTURE, DONE, STORE

log = logging.getLogger("snapd")
#: how often a running job's child is polled for its result
POLL_S = 0.25

JOB = "snapd.ship.aftercore"
MAX_FILES = 512  # fds handed to a capture child (its RLIMIT_NOFILE is 1024)
GC_EVERY = 60.0  # seconds between ELF cache collections
RETRY_MIN, RETRY_MAX = 5.0, 600.0
MAX_ATTEMPTS = 3  # for failures that waiting cannot fix (a disk that fills up is retried forever)
#: a rate no machine is slower than, at idle priority: the deadline of a job on N bytes
SLOW_BYTES_PER_S = 4 << 20


@dataclass
class Task:
    core_id: int
    due: float = 0.0
    attempts: int = 0
    name: str = ""  # the core's file name when the job started
    #: a capture's result (build-ids, the executable's) whose record met a full disk: recorded
    #: again when due, without a new capture
    kept: tuple[list[str], str] | None = None


def disk_full(why: str) -> bool:
    """ENOSPC or EDQUOT, as the file system or SQLite ("database or disk is full") words it."""
    return "No space left" in why or "quota" in why.lower() or "disk is full" in why


@dataclass
class _Lane:
    name: str
    start: Callable[[Task], BoundedRun | None]
    done: Callable[[Task, Result | Failure], None]
    queue: list[Task] = field(default_factory=list)
    current: tuple[Task, BoundedRun] | None = None

    def add(self, task: Task) -> None:
        if all(t.core_id != task.core_id for t in self.queue):
            self.queue.append(task)

    @property
    def idle(self) -> bool:
        return self.current is None

    def tick(self, now: float) -> None:
        if self.current is not None:
            task, run = self.current
            res = run.step(0)
            if res is None:
                return
            self.current = None
            self.done(task, res)
        while self.current is None:
            due = [t for t in self.queue if t.due <= now]
            if not due:
                return
            task = min(due, key=lambda t: (t.due, t.core_id))
            self.queue.remove(task)
            try:
                started = self.start(task)
            except (OSError, SnapdError) as err:
                log.error("core %d: cannot start the %s job: %s", task.core_id, self.name, err)
                continue
            if started is not None:
                self.current = (task, started)

    def next_tick(self) -> float | None:
        """While a job runs, soon (its child is polled); else when the next queued one is due."""
        if self.current is not None:
            return time.monotonic() + POLL_S
        return min((t.due for t in self.queue), default=None)

    def close(self) -> None:
        if self.current is not None:
            self.current[1].kill()  # its outputs are temp files (removed) or unrecorded (redone)
            self.current = None

    def drop(self, core_id: int) -> bool:
        """Forget ``core_id``'s work; True if its job was running (and is now killed and reaped:
        a child still reading an unlinked core keeps its blocks, unlink(2))."""
        self.queue = [t for t in self.queue if t.core_id != core_id]
        if self.current is not None and self.current[0].core_id == core_id:
            self.close()
            return True
        return False


class AfterCore:
    """``published(entry)`` from the dump's end; ``tick`` from the loop. ``upload(entry,
    exe_build_id)`` is called when a core's bundle is in the outbox (snapd.daemon.uploads)."""

    def __init__(self, catalog: Catalog, config: DaemonConfig, metrics: Metrics) -> None:
        self.catalog = catalog
        self.config = config
        self.metrics = metrics
        self.shipping = catalog.shipping
        self.cache = ElfCache(self.shipping.elf_cache_dir)
        catalog.elf_bytes = self.cache.own_bytes  # retention counts what only the cache holds
        self.upload: Callable[[Entry, str], None] | None = None
        self.capture = _Lane("capture", self._start_capture, self._capture_done)
        self.store = _Lane("store", self._start_store, self._store_done)
        self._next_gc = 0.0
        self._warned: set[str] = set()

    @property
    def first_stage(self) -> str:
        """What a new core's work starts with ("" for none): ``Catalog.publish(after=...)``."""
        if self.config.elf_cache:
            return CAPTURE
        return STORE if self._wants_store() else ""

    def _wants_store(self) -> bool:
        return self.config.compress is Compression.ZSTD or self.upload is not None

    def resume(self) -> None:
        """Queue the work a previous daemon left unfinished (at start, after uploads resumed)."""
        n = 0
        for entry, row in self.shipping.unfinished():
            if row.stage == CAPTURE:
                self.capture.add(Task(entry.id))
            elif row.stage == STORE:
                self.store.add(Task(entry.id))
            else:
                continue
            n += 1
        if n:
            log.info("resuming the work after publication of %d core(s)", n)

    def published(self, entry: Entry) -> None:
        if self.first_stage == CAPTURE:
            self.capture.add(Task(entry.id))
        elif self.first_stage == STORE:
            self.store.add(Task(entry.id))

    # --- capture: the binaries as they ran -----------------------------------------------------
    def _start_capture(self, task: Task) -> BoundedRun | None:
        entry = self._entry(task.core_id)
        if entry is None:
            return None
        if task.kept is not None:
            self._record_kept(task, *task.kept)
            return None
        files = _map_files(entry.pid)
        try:
            args = {"op": "capture", "core": entry.path, "cache": self.cache.directory,
                    "files": {p: fd for p, fd in files.items()}}  # fmt: skip
            return BoundedRun(JOB, args, self._limits(entry, 120.0), fds=list(files.values()))
        finally:
            for fd in files.values():
                os.close(fd)

    def _capture_done(self, task: Task, res: Result | Failure) -> None:
        ids: list[str] = []
        exe_id = ""
        if isinstance(res, Failure):
            log.warning("core %d: its binaries were not kept: %s", task.core_id, res.why)
        else:
            ids = [str(b) for b in res.value.get("build_ids", [])]
            exe_id = str(res.value.get("exe_build_id") or "")
            missed = res.value.get("missed") or []
            if missed:
                shown = "; ".join(f"{p}: {why}" for p, why in missed[:3])
                more = f" (and {len(missed) - 3} more)" if len(missed) > 3 else ""
                log.info("core %d: %d binaries kept, not: %s%s", task.core_id, len(ids), shown, more)
        self._record_kept(task, ids, exe_id)

    def _record_kept(self, task: Task, ids: list[str], exe_id: str) -> None:
        nxt = STORE if self._wants_store() else DONE
        try:
            self.shipping.kept(task.core_id, ids, exe_id, nxt)
        except StoreError as err:
            if not disk_full(str(err)):
                log.error("core %d: cannot record its kept binaries: %s", task.core_id, err)
                return
            # The catalog met a full disk: retention makes room, and the record is tried again
            # (the entry's bundle and upload wait for it), as a bundle would be.
            self._vacuum(task.core_id)
            task.attempts += 1
            task.kept = (ids, exe_id)
            task.due = time.monotonic() + min(RETRY_MAX, RETRY_MIN * 2 ** min(task.attempts - 1, 16))
            self._warn_once(f"core {task.core_id}: cannot record its kept binaries: {err}; retrying")
            self.capture.add(task)
            return
        if nxt == STORE:
            self.store.add(Task(task.core_id))

    # --- store: compression, the bundle --------------------------------------------------------
    def _start_store(self, task: Task) -> BoundedRun | None:
        entry = self._entry(task.core_id)
        if entry is None:
            return None
        compress = self.config.compress is Compression.ZSTD and not entry.compression
        bundle = self.shipping.bundle_path(entry.id) if self.upload is not None else None
        if not compress and bundle is None:
            self._stage(entry.id, DONE)
            return None
        task.name = entry.name
        up = self.config.upload
        args = {
            "op": "store",
            "core": entry.path,
            "compress": compress,
            "bundle": bundle,
            "cache": self.cache.directory,
            "entry": entry.to_dict(context=False),
            "context": entry.context or None,
            "name": entry.name.removesuffix(".zst"),
            "host": up.host if up else None,
        }
        # Bundling a core already compressed unpacks it first: into the store's scratch directory
        # (the child may write nowhere else).
        env = {"SNAPD_TMPDIR": self.shipping.scratch_dir}
        return BoundedRun(JOB, args, self._limits(entry, 300.0), env=env)

    def _store_done(self, task: Task, res: Result | Failure) -> None:
        if isinstance(res, Failure):
            self._retry(task, res.why)
            return
        v = res.value
        c = v.get("compressed")
        if c:
            ok = self.shipping.compressed(task.core_id, task.name, str(c["name"]), int(c["data_bytes"]),
                                          float(c["seconds"]))  # fmt: skip
            if ok:
                log.info(
                    "core %d stored compressed: %.1f MiB of data in %.1f MiB (1:%.1f), %.1f s",
                    task.core_id, c["data_bytes"] / 2**20, c["disk_bytes"] / 2**20,
                    c["data_bytes"] / max(1, c["disk_bytes"]), c["seconds"],
                )  # fmt: skip
        elif v.get("compress_error"):
            self._warn_once(f"core {task.core_id}: not compressed: {v['compress_error']}")
        if self.upload is None:
            self._stage(task.core_id, DONE)
            return
        if v.get("bundle_error") or not v.get("bundle"):
            self._retry(task, str(v.get("bundle_error") or "no bundle written"))
            return
        entry = self._entry(task.core_id)
        if entry is None:  # removed meanwhile (ctl rm, retention): its bundle goes too
            self.shipping.drop_bundle(task.core_id)
            return
        row = self.shipping.rows([entry.id]).get(entry.id)
        try:
            self.upload(entry, row.exe_build_id if row else "")
        except StoreError as err:
            self._retry(task, str(err))
            return
        self._vacuum(entry.id)  # the bundle is bytes on disk: retention may have to make room

    def _vacuum(self, spare: int) -> None:
        try:
            self.catalog.vacuum(exclude=(spare,))
        except (StoreError, OSError) as err:
            log.warning("retention after a bundle failed: %s", err)

    def _retry(self, task: Task, why: str) -> None:
        """A bundle could not be written: try again later (forever if the disk is full, since
        retention makes room; a few times for anything else)."""
        task.attempts += 1
        full = disk_full(why)
        if not full and task.attempts >= MAX_ATTEMPTS:
            log.error("core %d: its bundle cannot be written (%s); giving up after %d attempts",
                      task.core_id, why, task.attempts)  # fmt: skip
            self._stage(task.core_id, DONE, error=why)
            return
        if full:
            self._vacuum(task.core_id)
        delay = min(RETRY_MAX, RETRY_MIN * 2 ** min(task.attempts - 1, 16))
        self._warn_once(f"core {task.core_id}: work after publication failed: {why}; retrying")
        task.due = time.monotonic() + delay
        self.store.add(task)

    # --- the loop client -----------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self.capture.tick(now)
        self.store.tick(now)
        if now >= self._next_gc and self.capture.idle:
            self._next_gc = now + GC_EVERY
            self.collect()

    def collect(self) -> None:
        """Release the kept binaries no core on disk needs any more (never while a capture
        child may be adding some)."""
        # A capture waiting to record what it kept (a full disk) references its files too.
        waiting = {b for t in self.capture.queue if t.kept is not None for b in t.kept[0]}
        try:
            gone = self.cache.gc(self.shipping.referenced_build_ids() | waiting)
        except (OSError, SnapdError) as err:
            log.warning("ELF cache: cannot collect: %s", err)
            return
        if gone:
            log.info("ELF cache: released %d file(s) no core needs", len(gone))

    def next_tick(self) -> float | None:
        times = [t for t in (self.capture.next_tick(), self.store.next_tick()) if t is not None]
        return min(times, default=None)

    def refresh_metrics(self, m: Metrics) -> None:
        with contextlib.suppress(OSError, SnapdError):  # unreadable now: the last value stands
            cores = self.catalog.usage() + self.shipping.outbox_bytes()
            m.set_disk_bytes(cores, self.cache.usage().own_bytes)

    def removed(self, entry: Entry) -> None:
        """Retention removed ``entry`` (:attr:`Catalog.removed`): the work on it is not wanted,
        and the next core may need the blocks its job still holds."""
        for lane in (self.capture, self.store):
            if lane.drop(entry.id):
                log.info("core %d: %s job cancelled: retention removed the core", entry.id, lane.name)
                if lane is self.store:
                    # A killed store job may have published the bundle already, before the
                    # shipping row named it (so forget() could not see it): it goes too, now
                    # that the child is reaped and can publish nothing more.
                    self.shipping.drop_bundle(entry.id)

    def close(self) -> None:
        self.capture.close()
        self.store.close()

    # --- helpers -------------------------------------------------------------------------------
    def _entry(self, core_id: int) -> Entry | None:
        try:
            e = self.catalog.get(core_id)
        except StoreError:
            return None
        if not e.complete:
            self._stage(core_id, DONE)
            return None
        return e

    def _stage(self, core_id: int, stage: str, *, error: str = "") -> None:
        try:
            self.shipping.set_stage(core_id, stage, error=error)
        except StoreError as err:
            log.error("core %d: cannot record its state: %s", core_id, err)

    def _warn_once(self, msg: str) -> None:
        if msg not in self._warned:
            self._warned.add(msg)
            log.warning("%s", msg)

    def _limits(self, entry: Entry, base: float) -> Limits:
        """A deadline no healthy machine reaches: ``base`` plus the core's data at a crawl."""
        seconds = base + entry.disk_bytes / SLOW_BYTES_PER_S
        d = self.shipping
        return Limits(
            deadline=seconds,
            cpu_seconds=int(seconds) * 2,  # zstd's worker threads add up
            address_space=8 << 30,
            file_size=(1 << 62),
            user="root",  # it reads 0600 cores and writes into the store; Landlock bounds where
            read_paths=("/",),
            write_paths=(d.cores_dir, d.outbox_dir, d.elf_cache_dir, d.scratch_dir),
            output_bytes=1 << 20,
        )


def _map_files(pid: int) -> dict[str, int]:
    """Open fds of the files ``pid`` maps at offset 0, as /proc/PID/map_files (the inodes the
    process maps, whatever their paths now name), by path; best effort (it may have exited)."""
    out: dict[str, int] = {}
    try:
        maps = procfs.maps(pid)
    except SnapdError:
        return out
    for m in maps:
        path = m.path.removesuffix(" (deleted)")
        if m.offset or not path.startswith("/") or path in out or len(out) >= MAX_FILES:
            continue
        with contextlib.suppress(OSError):
            out[path] = os.open(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", os.O_RDONLY | os.O_CLOEXEC)
    return out
