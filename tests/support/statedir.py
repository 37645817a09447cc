"""Checks of a daemon's state directory: only whole cores are listed, nothing partial is left,
the catalog's SQLite is sound."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from support.cores import elf_segments

PARTIAL = ".snapd-partial."


def partials(cores_dir: Path) -> list[str]:
    try:
        return [n for n in os.listdir(cores_dir) if n.startswith(PARTIAL)]
    except FileNotFoundError:
        return []


def integrity(db: Path) -> str:
    """PRAGMA integrity_check of the catalog, opened as a second reader (WAL allows it)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return ";".join(str(r[0]) for r in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


def pending_rows(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT COUNT(*) FROM cores WHERE status = 'pending'").fetchone()[0])
    finally:
        con.close()


def complete_cores(listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in listing if c["status"] == "complete"]


def check_listing(listing: list[dict[str, Any]], cores_dir: Path) -> None:
    """Only complete or failed entries; every complete one is a whole file of the listed size,
    every failed one has no file; nothing in cores/ that no complete entry names."""
    on_disk = set(os.listdir(cores_dir))
    named = set()
    for c in listing:
        name = os.path.basename(c["path"])
        assert c["status"] == "complete" or c["status"].startswith("failed"), c
        if c["status"] == "complete":
            st = os.stat(c["path"])
            assert st.st_size == int(c["size"]), c
            elf_segments(c["path"])
            named.add(name)
        else:
            assert name not in on_disk, c
    assert on_disk <= named, f"unlisted files in cores/: {sorted(on_disk - named)}"
