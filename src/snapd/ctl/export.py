"""``snapd ctl export ID -o FILE`` and ``snapd ctl debug ID``, on the client's side.

Both read the core and the binaries kept for it directly (the client runs as root beside the
daemon, since cores are 0600 root), so neither ever stalls the daemon's loop however big the
core: the daemon only answers ``info``. ``export`` writes the bundle ``snapd debug`` opens on
any machine, with the binaries the process ran (the daemon's ELF cache first, then this host's
files, each proven by build-id). ``debug`` opens a compressed core through a plain sparse copy,
and points gdb at a private sysroot of links to those same binaries, so an upgrade since the
core was taken does not cost its backtraces.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from snapd.ctl.protocol import CtlError
from snapd.ship import debug as ship_debug
from snapd.ship.bundle import write_bundle
from snapd.ship.elfcache import ElfCache
from snapd.ship.elfid import read_core_files
from snapd.ship.elfsource import Chain, ElfSource, HostFiles
from snapd.ship.errors import ShipError
from snapd.ship.opencore import open_core, private_dir
from snapd.text import safe


def check_local(entry: dict[str, Any], what: str) -> str:
    """The entry's core file, or a :class:`CtlError` saying why there is none."""
    status = str(entry.get("status", ""))
    up = entry.get("upload") or {}
    if status == "remote":
        raise CtlError(
            f"core {entry.get('id')} is only in the object store now ({safe(up.get('key', '?'))}): "
            "snapd fleet fetch KEY -o FILE, then snapd debug FILE"
        )
    if status != "complete":
        raise CtlError(f"core {entry.get('id')} is {safe(status)}: nothing to {what}")
    path = str(entry["path"])
    if not os.path.exists(path):
        raise CtlError(f"{safe(path)}: the core file is gone")
    if not os.access(path, os.R_OK):
        raise CtlError(f"{safe(path)}: permission denied (cores are 0600 root; run as root)")
    return path


def elf_source(entry: dict[str, Any]) -> ElfSource:
    """The daemon's ELF cache (when this user may use it), then this host's files."""
    cache_dir = entry.get("elf_cache")
    if isinstance(cache_dir, str) and os.path.isdir(cache_dir) and os.access(cache_dir, os.R_OK | os.X_OK):
        try:
            return Chain(ElfCache(cache_dir), HostFiles())
        except ShipError:
            pass
    return HostFiles()


def export(entry: dict[str, Any], out: str, *, force: bool = False) -> int:
    path = check_local(entry, "export")
    record = {k: v for k, v in entry.items() if k not in ("context", "elf_cache", "report")}
    m = write_bundle(
        path,
        out,
        entry=record,
        context=entry.get("context") or None,
        report=entry.get("report") or None,
        elf_source=elf_source(entry),
        name=str(entry.get("name", "")).removesuffix(".zst") or None,
        replace=force,
    )
    mib = 2**20
    print(
        f"core {entry.get('id')}: {safe(out)}: {len(m.files)} file(s), core {m.core_size / mib:,.1f} MiB "
        f"({m.core_data_bytes / mib:,.1f} MiB of data), bundle {m.bundle_bytes / mib:,.1f} MiB"
    )
    for miss in m.missing:
        print(f"left out {safe(miss.path)}: {safe(miss.reason)}", file=sys.stderr)
    return 0


def debug(entry: dict[str, Any], debugger: str, extra: str) -> int:
    path = check_local(entry, "debug")
    prog = ship_debug.find_debugger(debugger)
    source = elf_source(entry)
    with open_core(path) as plain, private_dir("snapd-debug-") as d:
        cf = read_core_files(plain)
        root = os.path.join(d, "root")
        files: list[str] = []
        exe = None
        for f in cf.files:
            local, _ = source.lookup(f.path, f.build_id)
            if local is None:
                continue
            link = root + f.path
            os.makedirs(os.path.dirname(link), mode=0o700, exist_ok=True)
            os.symlink(os.path.abspath(local), link)
            files.append(link)
            if f.path == cf.exe:
                exe = link
        if exe is None:
            host_exe = str(entry.get("exe") or "").removesuffix(" (deleted)")
            if host_exe.startswith("/") and os.path.exists(host_exe):
                exe = host_exe
            else:
                print(f"warning: executable {safe(host_exe) or '?'} is gone; starting without it",
                      file=sys.stderr)  # fmt: skip
        dirs = sorted({os.path.dirname(f) for f in files})
        target = ship_debug.Target(plain, exe, root if files else None, dirs, files)
        argv = ship_debug.debugger_argv(debugger, target, shlex.split(extra))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            return ship_debug.run([prog, *argv[1:]])
        except ShipError as err:
            raise CtlError(str(err)) from err
