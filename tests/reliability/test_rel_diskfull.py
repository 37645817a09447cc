"""Fault 3: the disk fills up. The daemon's state dir is a small tmpfs (48 MiB): a core that does
not fit is dropped with one clear log line and its target runs on; retention makes room so that
the next cores succeed; a catalog that cannot grow does not bring the daemon down."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.daemon import DaemonHarness, Victims, syscall_rule
from support.proc import halted_why
from support.statedir import check_listing, integrity, partials, pending_rows
from support.waiting import scaled, wait_for

pytestmark = pytest.mark.kernel

FS_MIB = 48


@pytest.fixture
def small_state(daemon: DaemonHarness) -> Iterator[DaemonHarness]:
    """The daemon's state dir on a 48 MiB tmpfs (lazily unmounted after the daemon stops)."""
    daemon.state.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_MIB}m,mode=0700", "snapd-rel", str(daemon.state)],
        check=True,
    )
    try:
        yield daemon
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(daemon.state)], check=False)


def free_mib(path: os.PathLike[str]) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


def wait_entry(daemon: DaemonHarness, rule: str, after: int) -> dict[str, Any]:
    """The first entry (complete or failed) of ``rule`` newer than id ``after``, once idle.
    (Retention deletes entries, so counting them would not do.)"""

    def newer() -> dict[str, Any] | None:
        return next((c for c in daemon.cores("--rule", rule) if int(c["id"]) > after), None)

    wait_for(newer, 60, f"a {rule} entry after id {after}")
    wait_for(daemon.idle, 60, "the daemon to be idle")
    got = newer()
    assert got is not None
    return got


def test_disk_full_drops_the_core_and_retention_makes_room(
    small_state: DaemonHarness, victims: Victims
) -> None:
    daemon = small_state
    big = victims(64)  # 64 MiB of anonymous memory: can never fit in 48 MiB
    mid = victims(28)  # fits once; the next fits only if the previous one is removed first
    daemon.write_rule("big.yaml", syscall_rule("big", big.pid))
    daemon.write_rule("mid.yaml", syscall_rule("mid", mid.pid))
    daemon.start("--cores-per-hour", "100000")  # retention: defaults (MaxUse 10%, KeepFree 15%)
    cores = daemon.state / "cores"
    baseline = free_mib(daemon.state)

    big.cmd("g 1")
    e = wait_entry(daemon, "big", 0)
    assert str(e["status"]).startswith("failed") and "no space left on device" in str(e["status"]), e
    assert halted_why(big.pid) is None
    big.cmd("p")  # it runs on
    assert not partials(cores) and not any(cores.iterdir())
    assert free_mib(daemon.state) > baseline - 1, "the dropped core's blocks were not freed"
    lines = [ln for ln in daemon.log_text().splitlines() if f"pid {big.pid}" in ln]
    # one line, after its ISO time: "2026-12-01T22:08:55.527+00:00 ERROR: rule big: ..."
    assert len(lines) == 1 and lines[0].split(" ", 1)[1].startswith("ERROR: rule big: "), lines
    assert re.search(r"no space left on device", lines[0]), lines

    # Four 28 MiB cores in a row on a 48 MiB file system: each needs the previous one gone.
    results = []
    last = int(e["id"])
    for _ in range(4):
        mid.cmd("g 1")
        got = wait_entry(daemon, "mid", last)
        last = int(got["id"])
        results.append(str(got["status"]))
        assert halted_why(mid.pid) is None
        assert not partials(cores)
    print(f"\n28 MiB cores on a {FS_MIB} MiB tmpfs: {results}")
    listing = daemon.cores()
    check_listing(listing, cores)
    assert pending_rows(daemon.state / "catalog.db") == 0
    assert integrity(daemon.state / "catalog.db") == "ok"
    assert results[0] == "complete"
    assert results[-1] == "complete", f"retention never made room again: {results}"
    assert results == ["complete"] * 4, f"a core failed although retention could have made room: {results}"


def test_catalog_on_a_full_disk(small_state: DaemonHarness, victims: Victims) -> None:
    """The file system is filled to the last block by someone else: cores fail cleanly, the
    daemon survives, and once space is freed the next core succeeds."""
    daemon = small_state
    v = victims(4)
    daemon.write_rule("v.yaml", syscall_rule("v", v.pid))
    daemon.start("--cores-per-hour", "100000")
    filler = daemon.state / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", f"count={FS_MIB}"], capture_output=True)
    assert free_mib(daemon.state) < 0.1
    for _ in range(3):
        v.cmd("g 1")
        assert halted_why(v.pid) is None
    wait_for(daemon.idle, 30, "the daemon to be idle")
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()
    st = daemon.status()
    filler.unlink()
    v.cmd("g 1")
    wait_for(lambda: daemon.complete("v"), 30, "a core once space is back")
    check_listing(daemon.cores(), daemon.state / "cores")
    assert integrity(daemon.state / "catalog.db") == "ok"
    print(f"\nfull disk: status {st['cores']} cores, {st['failed']} failed; log:\n{daemon.log_text()}")


def reserved(cores: Path, size: int) -> bool:
    for name in partials(cores):
        try:
            if os.stat(cores / name).st_blocks * 512 >= size:
                return True
        except FileNotFoundError:
            pass
    return False


def test_disk_fills_up_during_a_dump(small_state: DaemonHarness, victims: Victims) -> None:
    """Someone else fills the file system while a core is being written (its blocks are already
    reserved, so the core itself completes): the catalog update that follows cannot grow the
    SQLite WAL. The daemon must log it and live on, not die."""
    daemon = small_state
    v = victims(24)
    daemon.write_rule("v.yaml", syscall_rule("v", v.pid))
    daemon.start("--cores-per-hour", "100000")
    cores = daemon.state / "cores"
    filler = daemon.state / "filler"
    for i in range(3):
        v.send("g 1")
        deadline = time.monotonic() + scaled(30)
        while not reserved(cores, 20 << 20) and time.monotonic() < deadline:
            time.sleep(0.0002)  # until the writer has fallocate()d its blocks
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}.{i}", "bs=64k"], capture_output=True)
        v.reply()
        wait_for(lambda: daemon.proc is None or daemon.proc.poll() is not None or daemon.idle(), 30, "idle")
        assert daemon.proc is not None and daemon.proc.poll() is None, f"round {i}: the daemon died"
        assert halted_why(v.pid) is None
        for f in daemon.state.glob("filler.*"):
            f.unlink()
    check_listing(daemon.cores(), cores)
    assert pending_rows(daemon.state / "catalog.db") == 0
    assert integrity(daemon.state / "catalog.db") == "ok"
    # and it still takes cores once there is room again
    last = max(int(c["id"]) for c in daemon.cores())
    v.cmd("g 1")
    assert wait_entry(daemon, "v", last)["status"] == "complete"
