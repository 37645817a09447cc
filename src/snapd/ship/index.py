"""The per-host index object of the fleet view: ``PREFIX/HOST/index.json``, a small JSON list of
the host's cores, rewritten by that host's uploader after each upload (one writer per host).

Object metadata travels in HTTP headers, which must be ASCII: values are percent-encoded
(:func:`encode_meta`) and decoded by the readers. The index is a convenience: a reader that
finds an object missing from it falls back to the object's own metadata.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from snapd.ship.config import UploadConfig

INDEX = "index.json"
SUFFIX = ".snapd"
MAX_ENTRIES = 20000
META_KEYS = ("rule", "pid", "comm", "exe", "build-id", "time", "host", "snapd-id", "name")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def clean_component(s: str, limit: int = 128) -> str:
    """A key component of safe characters only (a comm may hold '/', spaces or escapes)."""
    out = _UNSAFE.sub("_", s).strip("._") or "_"
    return out[:limit]


def host_prefix(cfg: UploadConfig, host: str | None = None) -> str:
    parts = [p for p in (cfg.prefix, clean_component(host or cfg.host)) if p]
    return "/".join(parts) + "/"


def object_key(cfg: UploadConfig, core_id: int | str, name: str) -> str:
    """``PREFIX/HOST/ID-NAME.snapd``."""
    base = clean_component(name, 160)
    if not base.endswith(SUFFIX):
        base += SUFFIX
    return f"{host_prefix(cfg)}{clean_component(str(core_id), 32)}-{base}"


def encode_meta(values: dict[str, object]) -> dict[str, str]:
    """S3 user metadata (x-amz-meta-*) from entry fields: ASCII, bounded (2 KiB in all on AWS)."""
    out: dict[str, str] = {}
    for k, v in values.items():
        if v is None or v == "":
            continue
        out[k] = urllib.parse.quote(str(v), safe=" /:@+,.=-_")[:512]
    return out


def decode_meta(meta: dict[str, str]) -> dict[str, str]:
    return {k.lower(): urllib.parse.unquote(v) for k, v in meta.items()}


def parse_index(raw: bytes) -> list[dict[str, Any]]:
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    cores = data.get("cores") if isinstance(data, dict) else None
    if not isinstance(cores, list):
        return []
    return [c for c in cores[:MAX_ENTRIES] if isinstance(c, dict) and isinstance(c.get("key"), str)]


def render_index(host: str, cores: list[dict[str, Any]]) -> bytes:
    return json.dumps({"host": host, "cores": cores[-MAX_ENTRIES:]}, sort_keys=True).encode()
