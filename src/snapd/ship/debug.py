"""``snapd debug FILE [--debugger gdb|drgn|pystack] [-- ARGS...]``: open a bundle, a compressed
core or a core in a debugger, on any machine.

A bundle is unpacked (sparse) into a private temp directory, and the debugger is pointed at the
binaries inside it: gdb gets ``set sysroot`` (the files at their original paths) and
``solib-search-path`` (their directories: the dynamic loader's link_map names libraries by the
path it opened, /lib/x86_64-linux-gnu/libc.so.6 or /lib64/ld-linux-x86-64.so.2, which on a
merged-/usr system is not the path NT_FILE records, so gdb falls back to finding them by base
name); drgn gets every bundled file with ``-s`` (matched by build-id); pystack gets
``--lib-search-path``. The directory is removed when the debugger exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from snapd.ship import container
from snapd.ship.bundle import unpacked
from snapd.ship.errors import BundleError
from snapd.ship.opencore import open_core
from snapd.text import safe

DEBUGGERS = ("gdb", "drgn", "pystack")


@dataclass
class Target:
    core: str
    exe: str | None = None
    sysroot: str | None = None
    solib_dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # every bundled ELF file
    missing: list[str] = field(default_factory=list)


def debugger_argv(debugger: str, t: Target, args: list[str]) -> list[str]:
    """The command line that opens ``t`` in ``debugger``, with the user's ``args``."""
    if debugger == "gdb":
        argv = ["gdb", "-q"]
        if t.sysroot:
            argv += ["-iex", f"set sysroot {t.sysroot}"]
        if t.solib_dirs:
            argv += ["-iex", f"set solib-search-path {':'.join(t.solib_dirs)}"]
        argv += args
        if t.exe:
            argv.append(t.exe)
        return [*argv, "-c", t.core]
    if debugger == "drgn":
        argv = ["drgn", "-c", t.core]
        for f in t.files:
            argv += ["-s", f]
        return argv + args
    if debugger == "pystack":
        argv = ["pystack", "core", t.core]
        if t.exe:
            argv.append(t.exe)
        if t.solib_dirs:
            argv += ["--lib-search-path", ":".join(t.solib_dirs)]
        return argv + args
    raise ValueError(debugger)


@contextlib.contextmanager
def opened(path: str) -> Iterator[Target]:
    """What ``path`` holds, unpacked where needed, for as long as the block runs."""
    if container.sniff(path) == "bundle":
        with unpacked(path) as u:
            files = [f"{u.root}/{f.member}" for f in u.manifest.files]
            missing = [f"{m.path}: {m.reason}" for m in u.manifest.missing]
            yield Target(u.core, u.exe, u.sysroot, u.solib_dirs, files, missing)
        return
    with open_core(path) as core:
        yield Target(core)


def run(argv: list[str]) -> int:
    """Run the debugger in the foreground; Ctrl-C belongs to it, not to us, while it runs."""
    try:
        proc = subprocess.Popen(argv)
    except FileNotFoundError as err:
        raise BundleError(argv[0], "debugger not found; install it (e.g. apt-get install gdb)") from err
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, old)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="snapd debug",
        description="Open a bundle (or a core, compressed or not) in a debugger, with the binaries it ran.",
        epilog="Arguments after -- go to the debugger, e.g.: "
        "snapd debug B -- -batch -ex 'thread apply all bt'",
    )
    p.add_argument("file", metavar="FILE", help="a bundle (snapd bundle, ctl export, fleet fetch) or a core")
    p.add_argument("--debugger", choices=DEBUGGERS, default="gdb")
    args = p.parse_args(argv)
    prog = find_debugger(args.debugger)
    with opened(args.file) as t:
        for m in t.missing:
            print(f"snapd debug: not in the bundle: {safe(m)}", file=sys.stderr)
        return run([prog, *debugger_argv(args.debugger, t, extra)[1:]])


def find_debugger(name: str) -> str:
    """On PATH, or beside our interpreter (drgn and pystack are Python packages that may live
    in snapd's own virtual environment)."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        hint = "apt-get install gdb" if name == "gdb" else f"pip install {name}"
        raise BundleError(name, f"debugger not found on PATH; install it ({hint})")
    return found
