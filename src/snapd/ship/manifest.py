"""The manifest of a bundle: what it holds and where it came from, as JSON (``manifest.json``,
the bundle's first member, so it can be read without unpacking the rest).

A manifest read from a bundle is hostile input: :meth:`Manifest.from_dict` keeps only fields of
the expected types and bounded lengths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = 1
RECORDS = ("entry", "context", "report")


@dataclass(frozen=True)
class BundledFile:
    path: str  # where the process had it mapped
    member: str  # where it is in the bundle ("root" + path)
    build_id: str  # "" when the core held none
    size: int
    data_bytes: int
    verified: bool  # build-id of the file == build-id in the core


@dataclass(frozen=True)
class MissingFile:
    path: str
    build_id: str
    reason: str


@dataclass
class Manifest:
    name: str
    host: str
    pid: int
    comm: str
    exe: str  # the executable's original path ("" if unknown)
    created: float
    snapd_version: str
    core_size: int = 0
    core_data_bytes: int = 0
    files: list[BundledFile] = field(default_factory=list)
    missing: list[MissingFile] = field(default_factory=list)
    records: list[str] = field(default_factory=list)  # which of RECORDS are included
    format: int = FORMAT
    bundle_bytes: int = 0  # size of the bundle file (not stored: filled in by the writer/reader)

    @property
    def build_ids(self) -> dict[str, str]:
        out = {f.path: f.build_id for f in self.files if f.build_id}
        out.update({m.path: m.build_id for m in self.missing if m.build_id})
        return out

    @property
    def exe_member(self) -> str | None:
        return next((f.member for f in self.files if f.path == self.exe), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("bundle_bytes")
        d["build_ids"] = self.build_ids
        return d

    @classmethod
    def from_dict(cls, d: object) -> Manifest:
        if not isinstance(d, dict):
            raise ValueError("the manifest is not a JSON object")

        def s(v: object, n: int = 4096) -> str:
            return v[:n] if isinstance(v, str) else ""

        def i(v: object) -> int:
            return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63 else 0

        files = [
            BundledFile(
                s(f.get("path")),
                s(f.get("member")),
                s(f.get("build_id"), 256),
                i(f.get("size")),
                i(f.get("data_bytes")),
                f.get("verified") is True,
            )
            for f in _dicts(d.get("files"))
        ]
        missing = [
            MissingFile(s(m.get("path")), s(m.get("build_id"), 256), s(m.get("reason"), 512))
            for m in _dicts(d.get("missing"))
        ]
        recs = d.get("records")
        created = d.get("created")
        return cls(
            name=s(d.get("name"), 1024),
            host=s(d.get("host"), 256),
            pid=i(d.get("pid")),
            comm=s(d.get("comm"), 64),
            exe=s(d.get("exe")),
            created=float(created) if isinstance(created, (int, float)) else 0.0,
            snapd_version=s(d.get("snapd_version"), 64),
            core_size=i(d.get("core_size")),
            core_data_bytes=i(d.get("core_data_bytes")),
            files=files,
            missing=missing,
            records=[r for r in recs if r in RECORDS] if isinstance(recs, list) else [],
            format=i(d.get("format")),
        )


def _dicts(v: object) -> list[dict[str, Any]]:
    return [x for x in v[:65536] if isinstance(x, dict)] if isinstance(v, list) else []
