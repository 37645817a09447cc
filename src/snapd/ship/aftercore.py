"""The work on a core after it is published, as a bounded job (snapd.sandbox): the daemon runs
``sandboxed(args)`` in a child process of low priority, with a deadline and an address-space
limit, writing only where its outputs go. A core's content is hostile input, and compressing or
bundling a big one is seconds of CPU: neither belongs in the daemon's loop.

Two operations:

``capture`` ``{core, cache, files: {path: fd}}``
    Keep, in the ELF cache, every file the core maps whose build-id the core holds. ``files``
    are fds the caller opened as ``/proc/PID/map_files/START-END`` (the very inode mapped, even
    if the path was replaced or deleted since; proc(5): it needs CAP_SYS_ADMIN, and a ptrace
    check a Landlock-confined child fails, so the parent opens them); a file without one is
    taken by its path. The cache refuses a file whose build-id is not the core's, so a pid
    reused meanwhile, or an upgrade, can only cost a file, never keep a wrong one. Returns
    ``{build_ids, exe_build_id, missed}``.

``store`` ``{core, compress, bundle, cache, entry, context, name, host}``
    Compress the core to ``CORE.zst`` beside it (never replacing anything), and/or write its
    bundle to ``bundle`` with the kept binaries (the ELF cache first, then this host's files by
    build-id). Each half reports its own failure (``compress_error``, ``bundle_error``) so one
    does not cost the other.
"""

from __future__ import annotations

import os
from typing import Any

from snapd.ship.bundle import write_bundle
from snapd.ship.compress import SUFFIX, compress_core
from snapd.ship.elfcache import ElfCache
from snapd.ship.elfid import read_core_files
from snapd.ship.elfsource import Chain, HostFiles
from snapd.ship.errors import ShipError
from snapd.ship.opencore import open_core


def sandboxed(args: dict[str, Any]) -> dict[str, Any]:
    op = args.get("op")
    if op == "capture":
        files = {str(k): int(v) for k, v in dict(args.get("files") or {}).items()}
        return capture(str(args["core"]), str(args["cache"]), files)
    if op == "store":
        return store(args)
    raise ValueError(f"unknown operation {op!r}")


def capture(core: str, cache_dir: str, files: dict[str, int]) -> dict[str, Any]:
    cache = ElfCache(cache_dir)
    with open_core(core) as plain:
        cf = read_core_files(plain)
    kept: list[str] = []
    missed: list[tuple[str, str]] = []
    exe_id = ""
    for f in cf.files:
        if f.build_id is None:
            continue
        sources = [f.path]
        if f.path in files:
            sources.insert(0, f"/proc/self/fd/{files[f.path]}")
        why = ""
        for src in sources:
            try:
                cache.keep(src, f.build_id)
            except ShipError as err:
                why = str(err)
                continue
            kept.append(f.build_id)
            if f.path == cf.exe:
                exe_id = f.build_id
            break
        else:
            missed.append((f.path, why))
    return {"build_ids": sorted(set(kept)), "exe_build_id": exe_id, "missed": missed}


def store(args: dict[str, Any]) -> dict[str, Any]:
    core = str(args["core"])
    out: dict[str, Any] = {"compressed": None, "compress_error": "", "bundle": None, "bundle_error": ""}
    if args.get("compress") and not core.endswith(SUFFIX):
        try:
            c = compress_core(core, level=int(args.get("level", 3)))
            out["compressed"] = {
                "name": os.path.basename(c.path),
                "data_bytes": c.data_bytes,
                "disk_bytes": c.disk_bytes,
                "apparent": c.apparent_size,
                "seconds": c.seconds,
            }
        except ShipError as err:
            out["compress_error"] = str(err)
    if args.get("bundle"):
        source = Chain(ElfCache(str(args["cache"])), HostFiles())
        try:
            # From the plain core while it is still there: bundling a compressed one would
            # first decompress it to a scratch file.
            m = write_bundle(
                core,
                str(args["bundle"]),
                entry=args.get("entry"),
                context=args.get("context"),
                report=args.get("report"),
                elf_source=source,
                name=args.get("name"),
                host=args.get("host"),
                replace=True,
            )
            out["bundle"] = {
                "bytes": m.bundle_bytes,
                "files": len(m.files),
                "missing": [[x.path, x.reason] for x in m.missing],
            }
        except ShipError as err:
            out["bundle_error"] = str(err)
    return out
