"""``snapd bundle CORE [--exe PATH] -o FILE``: pack a core and the binaries it ran (offline)."""

from __future__ import annotations

import argparse
import json
import sys

from snapd.ship.bundle import SUFFIX, write_bundle
from snapd.ship.elfcache import ElfCache
from snapd.ship.elfsource import Chain, ElfSource, HostFiles
from snapd.ship.errors import BundleError
from snapd.text import safe


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="snapd bundle",
        description="Write one file holding a core and every ELF file it maps whose build-id matches.",
    )
    p.add_argument("core", metavar="CORE", help="a core (plain or .zst)")
    p.add_argument("-o", dest="out", help=f"the bundle to write (default: CORE{SUFFIX})")
    p.add_argument("--exe", help="the executable, when it is no longer at the path it ran from")
    p.add_argument("--elf-cache", metavar="DIR", help="also take binaries from this ELF cache (by build-id)")
    p.add_argument("--entry", metavar="JSON", help="a catalog entry (JSON file) to include")
    p.add_argument(
        "--unverified",
        action="store_true",
        help="include files the core holds no build-id for (marked unverified)",
    )
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    args = p.parse_args(argv)
    sources: list[ElfSource] = []
    if args.elf_cache:
        sources.append(ElfCache(args.elf_cache))
    sources.append(HostFiles(unverified=args.unverified))
    entry = None
    if args.entry:
        try:
            with open(args.entry, "rb") as f:
                entry = json.loads(f.read(64 << 20))
        except (OSError, ValueError) as err:
            raise BundleError(args.entry, f"cannot read the entry: {err}") from err
    out = args.out or args.core + SUFFIX
    m = write_bundle(
        args.core, out, exe=args.exe, entry=entry, elf_source=Chain(*sources), replace=args.force
    )
    print(
        f"snapd bundle: {safe(out)}: pid {m.pid} ({safe(m.comm)}), core {_mib(m.core_size)} "
        f"({_mib(m.core_data_bytes)} of data), {len(m.files)} file(s), bundle {_mib(m.bundle_bytes)}"
    )
    for miss in m.missing:
        print(f"snapd bundle: left out {safe(miss.path)}: {safe(miss.reason)}", file=sys.stderr)
    return 0
