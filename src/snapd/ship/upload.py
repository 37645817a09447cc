"""Uploading bundles to S3-compatible storage, off the caller's thread, surviving outages.

:class:`Uploader` owns one worker thread and a queue ordered by when each job is next due. A
job is persisted (:class:`~snapd.ship.uploadstate.UploadStateStore`) before it is queued and
after every part, so a restart resumes it (:meth:`Uploader.resume_pending`): the same upload id,
only the missing parts. Failures are retried with exponential backoff, forever; each new kind of
failure is logged once, as one line (unreachable store, rejected credentials, missing bucket),
never raised to the caller. Small bundles go in one PUT, big ones as a multipart upload.

No duplicates: the object key is fixed by the job; an upload whose id the store no longer knows
is checked against the object (``snapd-id`` metadata and size) before starting over, and other
unfinished multipart uploads of the same key are aborted once the object is complete.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from snapd.ship import index
from snapd.ship.config import MAX_PARTS, UploadConfig
from snapd.ship.errors import ShipError, StoreUnavailable
from snapd.ship.s3 import error_code, explain, make_client
from snapd.ship.uploadstate import Part, UploadJob, UploadState, UploadStateStore

log = logging.getLogger("snapd.ship.upload")
CONTENT_TYPE = "application/vnd.snapd.bundle"


@dataclass(frozen=True)
class UploadResult:
    job_id: str
    key: str
    ok: bool
    error: str = ""
    attempts: int = 0
    size: int = 0
    multipart: bool = False


class _Permanent(ShipError):
    """Retrying cannot help (the bundle is gone): the job is dropped with a failed result."""


class _Stopping(Exception):
    pass


def job_for(cfg: UploadConfig, core_id: int | str, bundle: str, entry: dict[str, Any]) -> UploadJob:
    """The job for a catalog entry (its ``rule``, ``pid``, ``comm``, ``exe``, ``build_id``,
    ``time`` and ``name`` fields) whose bundle is at ``bundle``."""
    name = str(entry.get("name") or os.path.basename(bundle))
    meta = index.encode_meta(
        {
            "rule": entry.get("rule"),
            "pid": entry.get("pid"),
            "comm": entry.get("comm"),
            "exe": entry.get("exe"),
            "build-id": entry.get("build_id"),
            "time": entry.get("time"),
            "host": cfg.host,
            "snapd-id": core_id,
            "name": name,
        }
    )
    return UploadJob(str(core_id), bundle, index.object_key(cfg, core_id, name), meta)


class Uploader:
    def __init__(
        self,
        cfg: UploadConfig,
        state: UploadStateStore,
        *,
        on_result: Callable[[UploadResult], None] | None = None,
        client_factory: Callable[[UploadConfig], Any] = make_client,
    ) -> None:
        self.cfg = cfg
        self.store = state
        self.on_result = on_result
        self._factory = client_factory
        self._client: Any = None
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._jobs: dict[str, UploadState] = {}
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged = ""  # the failure last logged (one line per new failure, not per retry)

    # --- the caller's side: never blocks on the network -------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="snapd-upload", daemon=True)
            self._thread.start()

    def submit(self, job: UploadJob) -> None:
        """Queue ``job`` (persisted first, so it survives a restart)."""
        st = UploadState(job)
        self.store.save(st)
        self._queue(st, 0.0)

    def resume_pending(self) -> int:
        """Queue every job the state store still holds (after a restart); return how many."""
        n = 0
        for st in self.store.load_all():
            with self._cond:
                if st.job.job_id in self._jobs:
                    continue
            self._queue(st, 0.0)
            n += 1
        return n

    def pending(self) -> int:
        """Jobs not yet uploaded (cheap: no stat of their files)."""
        with self._cond:
            return len(self._jobs)

    def backlog(self) -> tuple[int, int]:
        """(jobs not yet uploaded, their bytes not yet stored)."""
        with self._cond:
            states = list(self._jobs.values())
        left = 0
        for st in states:
            size = st.size or _size(st.job.path)
            left += max(0, size - sum(p.size for p in st.parts))
        return len(states), left

    def wake(self) -> None:
        """Retry every waiting job now (e.g. the operator fixed the credentials)."""
        with self._cond:
            self._heap = [(0.0, seq, jid) for _, seq, jid in self._heap]
            heapq.heapify(self._heap)
            self._cond.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the request in flight (a part at most); unfinished jobs stay persisted."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _queue(self, st: UploadState, delay: float) -> None:
        with self._cond:
            self._jobs[st.job.job_id] = st
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + delay, self._seq, st.job.job_id))
            self._cond.notify_all()

    # --- the worker ---------------------------------------------------------------------------
    def _next(self) -> UploadState | None:
        with self._cond:
            while not self._stop.is_set():
                if self._heap:
                    due, _, jid = self._heap[0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        st = self._jobs.get(jid)
                        if st is not None:
                            return st
                        continue
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
        return None

    def _run(self) -> None:
        while True:
            st = self._next()
            if st is None:
                return
            try:
                multipart = self._upload(st)
            except _Stopping:
                return
            except _Permanent as err:
                self._finish(st, UploadResult(st.job.job_id, st.job.key, False, str(err), st.attempts + 1))
                log.error("upload of %s dropped: %s", st.job.key, err)
            except StoreUnavailable as err:
                self._retry(st, str(err), err.code)
            except Exception as err:  # a bug here must not end uploads: log it, retry later
                log.exception("upload of %s: unexpected error", st.job.key)
                self._retry(st, f"{type(err).__name__}: {err}", "internal")
            else:
                if st.attempts and self._logged:
                    log.warning("upload of %s: stored after %d retries", st.job.key, st.attempts)
                    self._logged = ""
                res = UploadResult(st.job.job_id, st.job.key, True, "", st.attempts + 1, st.size, multipart)
                self._finish(st, res)
                self._update_index(st)

    def _retry(self, st: UploadState, msg: str, code: str) -> None:
        st.attempts += 1
        delay = min(self.cfg.retry_max, self.cfg.retry_min * 2 ** min(st.attempts - 1, 30))
        delay *= random.uniform(0.9, 1.1)
        # One line per kind of failure, not per job: with many uploads queued during an outage
        # each retry of each would otherwise log the same thing with another key.
        kind = code or msg.removeprefix(f"{st.job.key}: ")
        if kind != self._logged:
            log.warning("upload of %s failed: %s; retrying in %.0f s", st.job.key, msg, delay)
            self._logged = kind
        else:
            log.debug("upload of %s failed again (%s); retrying in %.0f s", st.job.key, code, delay)
        st.last_error = msg
        with contextlib.suppress(OSError):
            self.store.save(st)
        if code in ("Unreachable", "Timeout") or code == "internal":
            self._client = None  # a fresh connection pool after an outage
        self._queue(st, delay)

    def _finish(self, st: UploadState, result: UploadResult) -> None:
        with self._cond:
            self._jobs.pop(st.job.job_id, None)
        try:
            self.store.remove(st.job.job_id)
        except OSError as err:
            log.error("upload state: cannot record the end of %s: %s", st.job.key, err)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.exception("upload result callback failed for %s", st.job.key)

    def _call(self, what: str, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return fn(Bucket=self.cfg.bucket, **kw)
        except Exception as err:
            if isinstance(err, ShipError):
                raise
            raise explain(err, self.cfg, what) from err

    def _c(self) -> Any:
        if self._client is None:
            try:
                self._client = self._factory(self.cfg)
            except ShipError as err:  # e.g. the credentials file became unreadable
                raise StoreUnavailable(self.cfg.source or "upload", str(err), code="config") from err
        return self._client

    def _upload(self, st: UploadState) -> bool:
        """Store ``st``'s bundle; return True if it went as a multipart upload."""
        job = st.job
        try:
            size = os.stat(job.path).st_size
        except FileNotFoundError:
            raise _Permanent(f"{job.path}: the bundle is gone") from None
        if st.size and st.size != size:
            st.upload_id, st.parts = "", []  # the file changed: start over
        st.size = size
        c = self._c()
        if size < self.cfg.multipart_threshold:
            with _open_bundle(job.path) as f:
                self._call(
                    job.key,
                    c.put_object,
                    Key=job.key,
                    Body=f,
                    ContentLength=size,
                    Metadata=job.metadata,
                    ContentType=CONTENT_TYPE,
                )
            return False
        st.part_size = st.part_size or max(self.cfg.part_size, math.ceil(size / MAX_PARTS))
        nparts = math.ceil(size / st.part_size)
        if st.upload_id:
            server = self._server_parts(c, st)
            if server is None:  # the store forgot it: completed already, or aborted
                if self._object_is_ours(c, job, size):
                    return True
                st.upload_id, st.parts = "", []
            else:
                st.parts = [p for p in server if p.size == _part_len(size, st.part_size, p.number)]
        if not st.upload_id:
            if self._object_is_ours(c, job, size):
                return True
            r = self._call(
                job.key,
                c.create_multipart_upload,
                Key=job.key,
                Metadata=job.metadata,
                ContentType=CONTENT_TYPE,
            )
            st.upload_id, st.parts = str(r["UploadId"]), []
            self.store.save(st)
        done = {p.number for p in st.parts}
        with _open_bundle(job.path) as f:
            for n in range(1, nparts + 1):
                if n in done:
                    continue
                if self._stop.is_set():
                    raise _Stopping
                length = _part_len(size, st.part_size, n)
                body = os.pread(f.fileno(), length, (n - 1) * st.part_size)
                if len(body) != length:
                    st.upload_id, st.parts = "", []
                    raise StoreUnavailable(job.key, "the bundle shrank while uploading; starting over")
                r = self._call(
                    job.key,
                    c.upload_part,
                    Key=job.key,
                    UploadId=st.upload_id,
                    PartNumber=n,
                    Body=body,
                    ContentLength=length,
                )
                st.parts.append(Part(n, str(r["ETag"]), length))
                self.store.save(st)
        parts = [{"ETag": p.etag, "PartNumber": p.number} for p in sorted(st.parts, key=lambda p: p.number)]
        try:
            self._call(
                job.key,
                c.complete_multipart_upload,
                Key=job.key,
                UploadId=st.upload_id,
                MultipartUpload={"Parts": parts},
            )
        except StoreUnavailable as err:
            if err.code not in ("NoSuchUpload", "InvalidPart", "InvalidPartOrder"):
                raise
            if not self._object_is_ours(c, job, size):
                st.upload_id, st.parts = "", []
                raise
        self._abort_strays(c, job.key, keep=None)
        return True

    def _server_parts(self, c: Any, st: UploadState) -> list[Part] | None:
        parts: list[Part] = []
        marker = 0
        while True:
            try:
                r = c.list_parts(
                    Bucket=self.cfg.bucket, Key=st.job.key, UploadId=st.upload_id, PartNumberMarker=marker
                )
            except Exception as err:
                if error_code(err) in ("NoSuchUpload", "NoSuchKey"):
                    return None
                raise explain(err, self.cfg, st.job.key) from err
            for p in r.get("Parts", []):
                parts.append(Part(int(p["PartNumber"]), str(p["ETag"]), int(p["Size"])))
            if not r.get("IsTruncated"):
                return parts
            marker = int(r.get("NextPartNumberMarker", 0))

    def _object_is_ours(self, c: Any, job: UploadJob, size: int) -> bool:
        try:
            h = c.head_object(Bucket=self.cfg.bucket, Key=job.key)
        except Exception as err:
            if error_code(err) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise explain(err, self.cfg, job.key) from err
        meta = h.get("Metadata", {})
        same_size = int(h.get("ContentLength", -1)) == size
        return bool(same_size and meta.get("snapd-id") == job.metadata.get("snapd-id"))

    def _abort_strays(self, c: Any, key: str, keep: str | None) -> None:
        try:
            r = c.list_multipart_uploads(Bucket=self.cfg.bucket, Prefix=key)
            for u in r.get("Uploads", []):
                if u.get("Key") == key and u.get("UploadId") != keep:
                    c.abort_multipart_upload(Bucket=self.cfg.bucket, Key=key, UploadId=u["UploadId"])
        except Exception as err:  # leftovers cost space, not correctness: say so and go on
            why = explain(err, self.cfg, key)
            log.warning("upload of %s: cannot clean up unfinished uploads: %s", key, why)

    def _update_index(self, st: UploadState) -> None:
        c = self._client
        if c is None:
            return
        key = index.host_prefix(self.cfg) + index.INDEX
        try:
            try:
                raw = c.get_object(Bucket=self.cfg.bucket, Key=key)["Body"].read(64 << 20)
                cores = index.parse_index(raw)
            except Exception as err:
                if error_code(err) not in ("NoSuchKey", "404"):
                    raise
                cores = []
            entry: dict[str, Any] = index.decode_meta(st.job.metadata)
            entry.update(key=st.job.key, size=st.size)
            cores = [e for e in cores if e.get("key") != st.job.key] + [entry]
            c.put_object(
                Bucket=self.cfg.bucket,
                Key=key,
                Body=index.render_index(self.cfg.host, cores),
                ContentType="application/json",
            )
        except Exception as err:  # the fleet view falls back to listing objects
            log.warning("upload index %s not updated: %s", key, explain(err, self.cfg, key))


def _part_len(size: int, part_size: int, n: int) -> int:
    return min(part_size, size - (n - 1) * part_size)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _open_bundle(path: str) -> BinaryIO:
    """The bundle to send; retention may remove it at any moment (after the stat too)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise _Permanent(f"{path}: the bundle is gone") from None
