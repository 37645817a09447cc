"""Core names and the store, end to end: real daemon, real core writer, real processes whose
comm is hostile, and links planted in the cores directory before the daemon starts.

Already proven with the store alone (tests/store/test_store_paths.py): every template with
every hostile comm (300 hypothesis examples and 20x21 fixed pairs, incl. 300-character and NUL
comms, which a real process cannot have: the kernel keeps 15 bytes and stops at NUL) stays a
single safe name; a symlink or hard link planted at the chosen name is never followed or
overwritten; symlinked state/cores dirs and catalog.db are refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from snapd.template import NameFields, expand
from support.daemon import DaemonHarness, syscall_rule
from support.hostile import Hostile
from support.waiting import wait_for

pytestmark = pytest.mark.kernel

COMMS = ["../..\n/x\x1b[2J", "-rf --help", "..", ".hidden", "a/b\\c\td"]


def test_hostile_comms_with_planted_links(
    sec_daemon: DaemonHarness, hostile: Hostile, tmp_path: Path
) -> None:
    d = sec_daemon
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious"
    precious.write_bytes(b"keep me")
    os.chmod(precious, 0o644)
    victims = [hostile(c) for c in COMMS]
    for i, v in enumerate(victims):
        d.write_rule(f"h{i}.yaml", syscall_rule(f"h{i}", v.pid, action="  core: {name: '%e'}\n"))

    # Plant, before the daemon opens the store: a symlink where each core would go, a hard link
    # at the next candidate name, and a symlink posing as the writer's partial file.
    cores = d.state / "cores"
    cores.mkdir(parents=True, mode=0o700)
    os.chmod(d.state, 0o700)
    names = [
        expand("%e", NameFields(v.pid, c, f"h{i}", 0, "h", 0.0))
        for i, (v, c) in enumerate(zip(victims, COMMS, strict=True))
    ]
    for n in names:
        assert "/" not in n and not n.startswith((".", "-")), n
        os.symlink(precious, cores / n)
        os.link(precious, cores / f"{n}.1")
    os.symlink(precious, cores / ".snapd-partial.planted")

    d.start()
    assert not (cores / ".snapd-partial.planted").exists(), "start-up recovery removes it (the link)"
    for v in victims:
        v.cmd("g 1")
    wait_for(
        lambda: len([c for c in d.cores() if c["status"] == "complete"]) == len(victims), 60, "all cores"
    )
    done = {c["pid"]: c for c in d.cores()}

    assert precious.read_bytes() == b"keep me" and stat.S_IMODE(precious.stat().st_mode) == 0o644
    assert precious.stat().st_nlink == 1 + len(names), "the planted hard links are left alone"
    for n in names:
        assert (cores / n).is_symlink() and os.readlink(cores / n) == str(precious)
    for v, c, n in zip(victims, COMMS, names, strict=True):
        core = done[v.pid]
        assert core["comm"] == c, "the catalog keeps the real comm, as data"
        p = Path(core["path"])
        assert p.parent == cores and p.name.startswith(n + ".") and p.name not in (n, n + ".1")
        st = os.lstat(p)
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == 0
        assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cores).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.state).st_mode) == 0o700
    for f in d.state.iterdir():
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f"{f} is readable by others"
    assert {f.name for f in outside.iterdir()} == {"precious"}
    for v in victims:
        v.cmd("p")
