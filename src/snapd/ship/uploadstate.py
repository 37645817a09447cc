"""What the uploader must remember across a restart: each queued job and, for a multipart
upload, its upload id and the parts already stored (number, ETag, size).

The catalog will implement :class:`UploadStateStore` (a column per entry); :class:`JsonStateStore`
is a small file-backed one (one JSON file, replaced atomically at every change).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from snapd.ship.publish import write_bytes_atomic


@dataclass(frozen=True)
class UploadJob:
    job_id: str  # the catalog id
    path: str  # the bundle to upload
    key: str  # the object key (snapd.ship.upload.object_key)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    size: int


@dataclass
class UploadState:
    job: UploadJob
    size: int = 0  # of the bundle when the upload started (a changed file starts over)
    upload_id: str = ""
    part_size: int = 0
    parts: list[Part] = field(default_factory=list)
    attempts: int = 0
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UploadState:
        job = UploadJob(**d["job"])
        parts = [Part(**p) for p in d.get("parts", [])]
        rest = {k: d[k] for k in ("size", "upload_id", "part_size", "attempts", "last_error") if k in d}
        return cls(job=job, parts=parts, **rest)


class UploadStateStore(Protocol):
    def load_all(self) -> list[UploadState]: ...

    def save(self, state: UploadState) -> None: ...

    def remove(self, job_id: str) -> None: ...


class JsonStateStore:
    """All states in one JSON file (mode 0600), rewritten atomically on every change."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._states: dict[str, dict[str, Any]] = {}
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read(64 << 20))
            if isinstance(data, dict):
                self._states = {k: v for k, v in data.items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except ValueError:
            os.replace(path, path + ".corrupt")  # start afresh; keep the evidence

    def load_all(self) -> list[UploadState]:
        with self._lock:
            out = []
            for d in self._states.values():
                try:
                    out.append(UploadState.from_dict(d))
                except (KeyError, TypeError):
                    continue
            return out

    def save(self, state: UploadState) -> None:
        with self._lock:
            self._states[state.job.job_id] = state.to_dict()
            self._flush()

    def remove(self, job_id: str) -> None:
        with self._lock:
            if self._states.pop(job_id, None) is not None:
                self._flush()

    def _flush(self) -> None:
        write_bytes_atomic(self.path, json.dumps(self._states, sort_keys=True).encode(), mode=0o600)
