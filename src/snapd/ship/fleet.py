"""``snapd fleet list|fetch``: the cores of every host, from the object store.

``list`` reads each host's index object (``PREFIX/HOST/index.json``) and the listing under
``PREFIX/``; an object the index does not name (its update failed, or another writer) is
described from its own metadata (HEAD). ``fetch KEY -o FILE`` downloads one bundle, published
atomically, for ``snapd debug FILE``.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from snapd.paths import DEFAULT_CONFIG
from snapd.ship import index
from snapd.ship.config import UploadConfig, load_upload_config
from snapd.ship.errors import ConfigError, StoreUnavailable
from snapd.ship.publish import atomic_output
from snapd.ship.s3 import error_code, explain, make_client
from snapd.text import safe


@dataclass(frozen=True)
class FleetCore:
    key: str
    host: str
    id: str
    name: str
    size: int
    time: str  # as the entry recorded it (UTC ISO 8601)
    rule: str = ""
    pid: str = ""
    comm: str = ""
    exe: str = ""
    build_id: str = ""


def _from_meta(key: str, host: str, size: int, meta: dict[str, Any], modified: str = "") -> FleetCore:
    g = {k: str(v) for k, v in meta.items()}
    return FleetCore(
        key=key,
        host=g.get("host", host),
        id=g.get("snapd-id", ""),
        name=g.get("name", key.rsplit("/", 1)[-1]),
        size=int(meta.get("size", size) or size),
        time=g.get("time", modified),
        rule=g.get("rule", ""),
        pid=g.get("pid", ""),
        comm=g.get("comm", ""),
        exe=g.get("exe", ""),
        build_id=g.get("build-id", ""),
    )


def _hosts(c: Any, cfg: UploadConfig) -> list[str]:
    base = f"{cfg.prefix}/" if cfg.prefix else ""
    hosts: list[str] = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=base, Delimiter="/"):
        hosts += [p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
    return hosts


def list_cores(
    c: Any, cfg: UploadConfig, host: str | None = None, since: float | None = None
) -> list[FleetCore]:
    """Every core in the bucket (of ``host`` only, if given), oldest first."""
    try:
        hosts = [index.clean_component(host)] if host else _hosts(c, cfg)
        out: list[FleetCore] = []
        for h in hosts:
            out += _host_cores(c, cfg, h)
    except StoreUnavailable:
        raise
    except Exception as err:
        raise explain(err, cfg, f"s3://{cfg.bucket}/{cfg.prefix}") from err
    if since is not None:
        out = [x for x in out if (_parse_time(x.time) or 0) >= since]
    return sorted(out, key=lambda x: (_parse_time(x.time) or 0, x.key))


def _host_cores(c: Any, cfg: UploadConfig, host: str) -> list[FleetCore]:
    prefix = index.host_prefix(cfg, host)
    known: dict[str, dict[str, Any]] = {}
    try:
        raw = c.get_object(Bucket=cfg.bucket, Key=prefix + index.INDEX)["Body"].read(64 << 20)
        known = {e["key"]: e for e in index.parse_index(raw)}
    except Exception as err:
        if error_code(err) not in ("NoSuchKey", "404"):
            raise
    out = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            key = o["Key"]
            if not key.endswith(index.SUFFIX):
                continue
            modified = o["LastModified"].strftime("%Y-%m-%dT%H:%M:%SZ") if "LastModified" in o else ""
            meta = known.get(key)
            if meta is None:
                meta = index.decode_meta(c.head_object(Bucket=cfg.bucket, Key=key).get("Metadata", {}))
            out.append(_from_meta(key, host, int(o.get("Size", 0)), meta, modified))
    return out


def fetch(c: Any, cfg: UploadConfig, key: str, out: str, *, replace: bool = False) -> int:
    """Download ``key`` to ``out`` atomically; return its size."""
    try:
        with atomic_output(out, mode=0o600, replace=replace) as fd, os.fdopen(os.dup(fd), "wb") as f:
            c.download_fileobj(cfg.bucket, key, f)
            f.flush()
            return os.fstat(fd).st_size
    except StoreUnavailable:
        raise
    except Exception as err:
        if error_code(err) in ("404", "NoSuchKey"):
            raise StoreUnavailable(
                key,
                f"no such object in bucket '{cfg.bucket}'; see 'snapd fleet list'",
                code="NoSuchKey",
                retryable=False,
            ) from err
        raise explain(err, cfg, key) from err


_REL = re.compile(r"(\d+)\s*([smhdw])")


def parse_since(text: str, now: float | None = None) -> float:
    """``2h``, ``30m``, ``7d`` (ago), or a UTC date/time ``2026-11-27[T01:05[:18]][Z]``."""
    now = time.time() if now is None else now
    m = _REL.fullmatch(text.strip())
    if m:
        return now - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    t = _parse_time(text)
    if t is None:
        raise ConfigError(
            "--since", f"{text!r} is neither a duration (2h, 7d) nor a UTC time (2026-11-27T01:05Z)"
        )
    return t


def _parse_time(text: str) -> float | None:
    s = text.strip().rstrip("Z").split(".")[0]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(s, fmt)))
        except ValueError:
            continue
    try:
        return float(s) if s else None
    except ValueError:
        return None


def render(cores: list[FleetCore]) -> str:
    rows = [("TIME", "HOST", "ID", "COMM", "PID", "RULE", "SIZE", "KEY")]
    rows += [
        (
            safe(x.time),
            safe(x.host),
            safe(x.id),
            safe(x.comm),
            safe(x.pid),
            safe(x.rule),
            f"{x.size / 2**20:.1f}M",
            safe(x.key),
        )
        for x in cores
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="snapd fleet", description="The cores of every host, in the object store."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list cores")
    ls.add_argument("--host", help="only this host")
    ls.add_argument("--since", help="only cores taken since: 2h, 7d, or a UTC time")
    ls.add_argument("--json", action="store_true", help="a JSON array")
    fe = sub.add_parser("fetch", help="download one bundle (open it with 'snapd debug FILE')")
    fe.add_argument("key", metavar="KEY")
    fe.add_argument("-o", dest="out", required=True, metavar="FILE")
    fe.add_argument("--force", action="store_true", help="replace FILE if it exists")
    for sp in (ls, fe):
        sp.add_argument(
            "--config", default=DEFAULT_CONFIG, help=f"file with an upload: section ({DEFAULT_CONFIG})"
        )
    args = p.parse_args(argv)
    cfg = load_upload_config(args.config)
    c = make_client(cfg)
    if args.cmd == "fetch":
        n = fetch(c, cfg, args.key, args.out, replace=args.force)
        print(
            f"snapd fleet: {safe(args.out)}: {n / 2**20:.1f} MiB; open it with: snapd debug {safe(args.out)}"
        )
        return 0
    since = parse_since(args.since) if args.since else None
    cores = list_cores(c, cfg, args.host, since)
    if args.json:
        print(json.dumps([asdict(x) for x in cores], indent=1))
        return 0
    if not cores:
        print("No cores found.", file=sys.stderr)
        return 1
    print(render(cores))
    return 0
