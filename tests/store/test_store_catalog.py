"""The catalog on real files: publish, list, filter, get, remove, fail, permissions."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.store import Catalog, CoreBusy, Entry, NoSuchCore, StoreError

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_publish_then_list_get(catalog: Catalog, core_writer: Callable[..., object]) -> None:
    e = catalog.reserve(
        rule="slow-open",
        pid=4242,
        comm="victim",
        exe="/usr/bin/victim",
        cmdline=["victim", "--serve"],
        uid=1000,
        cgroup="/system.slice/victim.service",
        unit="victim.service",
        trigger={"syscall": "openat", "args": [1, 2], "ret": -13},
        content="default-shm",
        context={"limits": [{"name": "Max open files", "soft": "1024", "hard": "4096", "units": "files"}]},
    )
    assert e.status == "pending"
    assert os.path.dirname(e.path) == catalog.cores_dir
    assert catalog.list() == [], "a pending entry is never listed"
    assert [x.id for x in catalog.list(include_pending=True)] == [e.id]

    info = core_writer(e.path, b"\x7fELF" + b"x" * 10000, 4242)
    done = catalog.publish(e.id, info)
    assert done.status == "complete"
    assert done.size == 10004
    assert done.disk_bytes == os.stat(e.path).st_blocks * 512
    assert done.threads == 2 and done.freeze_seconds == pytest.approx(0.002)
    assert done.dump_seconds == pytest.approx(0.05)
    assert done.snapshot == "frozen" and done.content == "default"
    assert ISO.match(done.time), done.time

    [listed] = catalog.list()
    d = listed.to_dict(context=False)
    for key in (
        "id",
        "path",
        "rule",
        "pid",
        "comm",
        "exe",
        "time",
        "size",
        "disk_bytes",
        "trigger",
        "status",
    ):
        assert key in d
    assert d["trigger"] == {"syscall": "openat", "args": [1, 2], "ret": -13}
    assert d["cmdline"] == ["victim", "--serve"] and d["uid"] == 1000 and d["unit"] == "victim.service"
    assert "context" not in d, "list-cores stays small: context only in info"
    full = catalog.get(e.id)
    assert full.context["limits"][0]["soft"] == "1024"
    assert full.info["freeze_seconds"] == pytest.approx(0.002)


def test_filters_and_order(catalog: Catalog, take: Callable[..., Entry]) -> None:
    a = take(rule="a", pid=1, now=1000.0)
    b = take(rule="b", pid=2, now=2000.0)
    c = take(rule="a", pid=2, now=3000.0)
    assert [e.id for e in catalog.list()] == [a.id, b.id, c.id], "oldest first"
    assert [e.id for e in catalog.list(rule="a")] == [a.id, c.id]
    assert [e.id for e in catalog.list(pid=2)] == [b.id, c.id]
    assert [e.id for e in catalog.list(since=1500.0)] == [b.id, c.id]
    assert [e.id for e in catalog.list(rule="a", pid=2, since=2500.0)] == [c.id]
    assert catalog.list(rule="nope") == []


def test_remove(catalog: Catalog, take: Callable[..., Entry]) -> None:
    e = take()
    assert os.path.exists(e.path)
    removed = catalog.remove(e.id)
    assert removed.id == e.id
    assert not os.path.exists(e.path)
    assert catalog.list() == []
    with pytest.raises(NoSuchCore):
        catalog.get(e.id)
    with pytest.raises(NoSuchCore):
        catalog.remove(e.id)


def test_pending_cannot_be_removed(catalog: Catalog) -> None:
    e = catalog.reserve(rule="r", pid=1)
    with pytest.raises(CoreBusy):
        catalog.remove(e.id)


def test_fail_records_why_and_removes_file(catalog: Catalog, core_writer: Callable[..., object]) -> None:
    e = catalog.reserve(rule="r", pid=1)
    core_writer(e.path)
    failed = catalog.fail(e.id, "target exited\nduring the dump")
    assert failed.status == "failed: target exited during the dump"
    assert not os.path.exists(e.path)
    assert [x.status for x in catalog.list()] == ["failed: target exited during the dump"]
    with pytest.raises(StoreError):
        catalog.fail(e.id, "again")
    with pytest.raises(StoreError):
        catalog.publish(e.id, core_writer(os.path.join(catalog.cores_dir, "other")))  # type: ignore[arg-type]


def test_publish_wrong_path_fails_entry(catalog: Catalog, core_writer: Callable[..., object]) -> None:
    e = catalog.reserve(rule="r", pid=1)
    info = core_writer(os.path.join(catalog.cores_dir, "elsewhere"))
    out = catalog.publish(e.id, info)  # type: ignore[arg-type]
    assert out.status.startswith("failed: the writer reported")


def test_modes(catalog: Catalog, take: Callable[..., Entry], state_dir: Path) -> None:
    e = take()
    assert stat.S_IMODE(os.stat(e.path).st_mode) == 0o600
    assert os.stat(e.path).st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(catalog.cores_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm"):
        p = state_dir / name
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, name


def test_publish_tightens_mode(catalog: Catalog, core_writer: Callable[..., object]) -> None:
    e = catalog.reserve(rule="r", pid=1)
    info = core_writer(e.path)
    os.chmod(e.path, 0o644)
    assert catalog.publish(e.id, info).complete  # type: ignore[arg-type]
    assert stat.S_IMODE(os.stat(e.path).st_mode) == 0o600


def test_reopen_keeps_entries(state_dir: Path, take: Callable[..., Entry], catalog: Catalog) -> None:
    e = take(rule="keep")
    catalog.close()
    with Catalog(state_dir) as again:
        [x] = again.list()
        assert x.id == e.id and x.rule == "keep" and x.complete
        assert again.integrity_check() == ["ok"]
        nxt = again.reserve(rule="keep", pid=1)
        assert nxt.id > e.id, "ids are never reused"


def test_target_controlled_strings_survive(catalog: Catalog, take: Callable[..., Entry]) -> None:
    weird = "a\udcff\n\x1b[31m\u202e"
    e = take(comm=weird, exe="/tmp/\udc80x", cmdline=["x", "\udcfe"])
    got = catalog.get(e.id)
    assert "\n" in got.comm and "\x1b" in got.comm  # stored faithfully; ctl escapes on output
    assert "/" not in os.path.basename(got.path)


def test_the_process_as_the_core_shows_it(catalog: Catalog, core_writer: Callable[..., object]) -> None:
    """The context is read when the dump is queued, the core while the target is halted: where
    the writer read a command line (or name), that one is listed, so info and core agree."""
    e = catalog.reserve(rule="r", pid=7, comm="postgres", cmdline=["postgres: idle"], content="default")
    info = core_writer(e.path, pid=7, comm="postmaster", cmdline=["postgres: UPDATE", "\udcfe"])
    done = catalog.publish(e.id, info)  # type: ignore[arg-type]
    assert done.comm == "postmaster" and done.cmdline == ["postgres: UPDATE", "\\udcfe"], done
    e = catalog.reserve(rule="r", pid=7, comm="postgres", cmdline=["postgres: idle"], content="default")
    done = catalog.publish(e.id, core_writer(e.path, pid=7))  # type: ignore[arg-type]
    assert done.comm == "postgres" and done.cmdline == ["postgres: idle"], "nothing read: kept"
