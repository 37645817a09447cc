"""Uploads of a daemon with ``upload:`` configured: snapd.ship's :class:`Uploader` (its own
thread; never blocks the loop) with its resumable state kept in the catalog, and its results
taken in by the loop.

Each complete core goes as a bundle (the format of ``snapd ctl export``), written to the
catalog's outbox by the after-publication work (snapd.daemon.aftercore). The uploader records
its state (upload id, parts stored) in the entry's shipping row after every part, so a daemon
restarted mid-upload sends only the missing parts; a result lost in a crash is found again at
start (the row is still queued) and the upload is checked against the store, never repeated
as a second object. Once stored, the bundle goes, and with ``keep_local: false`` the core too.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from snapd.ship.config import UploadConfig
from snapd.ship.metrics import Metrics
from snapd.ship.upload import Uploader, UploadResult, job_for
from snapd.ship.uploadstate import UploadJob, UploadState
from snapd.store import Catalog, Entry
from snapd.store.entry import REMOTE
from snapd.store.errors import StoreError
from snapd.store.shipping import QUEUED, ShipLog

log = logging.getLogger("snapd")
POLL_S = 0.25


class CatalogUploadState:
    """The uploader's :class:`~snapd.ship.uploadstate.UploadStateStore`, in the catalog's
    shipping table. ``remove`` forgets nothing: the loop records the end of an upload when it
    takes its result (a result lost in a crash leaves the row queued, and the upload is
    resumed, which finds the object already stored)."""

    def __init__(self, shipping: ShipLog) -> None:
        self.shipping = shipping
        self._failing = ""

    def load_all(self) -> list[UploadState]:
        out = []
        for d in self.shipping.upload_states():
            try:
                out.append(UploadState.from_dict(d))
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def save(self, state: UploadState) -> None:
        try:
            self.shipping.save_upload_state(int(state.job.job_id), state.to_dict(), state.attempts,
                                            state.last_error)  # fmt: skip
        except StoreError as err:
            # The disk is full, say: the upload goes on; a restart would resume from the last
            # state recorded, and the store's own list of parts corrects it.
            if str(err) != self._failing:
                log.warning("upload state of core %s not recorded: %s", state.job.job_id, err)
                self._failing = str(err)

    def remove(self, job_id: str) -> None:
        return None


class Uploads:
    """The loop part; ``done(entry, result)`` is called in the loop after each upload ends."""

    def __init__(
        self,
        cfg: UploadConfig,
        catalog: Catalog,
        metrics: Metrics,
        done: Callable[[Entry | None, UploadResult], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.metrics = metrics
        self.done = done
        self._results: queue.SimpleQueue[UploadResult] = queue.SimpleQueue()
        self.state = CatalogUploadState(catalog.shipping)
        self.uploader = Uploader(cfg, self.state, on_result=self._results.put)

    def start(self) -> None:
        """Start the worker and resume every upload left queued by a previous daemon."""
        self.uploader.start()
        resumed = self.uploader.resume_pending()
        with_state = {s.job.job_id for s in self.state.load_all()}
        again = 0
        for entry, row in self.catalog.shipping.unfinished():
            if row.upload == QUEUED and str(entry.id) not in with_state:
                self.uploader.submit(self._job(entry, row.upload_key, row.exe_build_id))
                again += 1
        if resumed or again:
            log.info("uploads: %d resumed, %d queued again", resumed, again)

    def job_key(self, entry: Entry) -> str:
        return self._job(entry, "", "").key

    def submit(self, entry: Entry, exe_build_id: str) -> None:
        """Queue ``entry``'s bundle (written to the outbox); the shipping row says so first."""
        job = self._job(entry, "", exe_build_id)
        if self.catalog.shipping.queued(entry.id, job.key):
            self.uploader.submit(job)

    def _job(self, entry: Entry, key: str, exe_build_id: str) -> UploadJob:
        meta: dict[str, Any] = {
            "name": entry.name.removesuffix(".zst"),
            "rule": entry.rule,
            "pid": entry.pid,
            "comm": entry.comm,
            "exe": entry.exe,
            "build_id": exe_build_id or None,
            "time": entry.time,
        }
        job = job_for(self.cfg, entry.id, self.catalog.shipping.bundle_path(entry.id), meta)
        if key and key != job.key:  # queued under another prefix or host name: keep its key
            job = UploadJob(job.job_id, job.path, key, job.metadata)
        return job

    def tick(self, now: float) -> None:
        while True:
            try:
                res = self._results.get_nowait()
            except queue.Empty:
                break
            self._took(res)

    def next_tick(self) -> float | None:
        """Results come from the uploader's thread: looked for at least every POLL_S while
        something is in flight (its parts take seconds; a quarter of one is late enough)."""
        return time.monotonic() + POLL_S if self.uploader.pending() else None

    def refresh_metrics(self, m: Metrics) -> None:
        with contextlib.suppress(StoreError):  # a catalog that cannot be read: the last value
            m.set_upload_backlog(*self.catalog.shipping.backlog())

    def _took(self, res: UploadResult) -> None:
        core_id = int(res.job_id)
        try:
            entry = self.catalog.shipping.upload_done(
                core_id, ok=res.ok, error=res.error, attempts=res.attempts,
                keep_local=self.cfg.keep_local, now=time.time(),
            )  # fmt: skip
        except StoreError as err:
            log.error("core %d: upload ended but cannot be recorded: %s", core_id, err)
            return
        self.metrics.upload_finished(res.ok)
        where = f"s3://{self.cfg.bucket}/{res.key}"
        if res.ok:
            remote = entry is not None and entry.status == REMOTE
            dropped = " (local file dropped: keep_local is false)" if remote else ""
            log.info("core %d uploaded to %s, %d bytes%s", core_id, where, res.size, dropped)
        elif entry is None:
            log.info("core %d: removed before its upload to %s ended", core_id, where)
        else:
            log.error("core %d: not uploaded to %s: %s", core_id, where, res.error)
        if self.done is not None:
            self.done(entry, res)

    def close(self) -> None:
        # The part in flight finishes (or times out); every unfinished upload stays queued in
        # the catalog and resumes at the next start.
        self.uploader.stop(timeout=10.0)
