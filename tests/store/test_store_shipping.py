"""The catalog's shipping table (issue 13): schema steps on old catalogs, the life of a core
after publication (kept binaries, compression swap, upload state, keep_local false), what
retention counts as bytes on disk, and recovery after a crash on either side of a swap."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from store_helpers import write_like_core_writer

from snapd.store import Catalog, Entry, Retention
from snapd.store.migrations import CORES
from snapd.store.retention import ByteLimit
from snapd.store.shipping import CAPTURE, DONE, QUEUED, STORE, UPLOAD

DATA = b"\x7fELF" + b"\1" * 8188


def publish(cat: Catalog, rule: str = "r", after: str = CAPTURE, data: bytes = DATA) -> Entry:
    e = cat.reserve(rule=rule, pid=100, comm="victim")
    info = write_like_core_writer(e.path, data, 100)
    return cat.publish(e.id, info, after=after, vacuum=False)


def compress_beside(e: Entry) -> str:
    """What compress_core leaves: NAME.zst beside the core (a smaller file of ours)."""
    new = e.path + ".zst"
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"(\xb5/\xfd" + b"z" * 100)
    os.close(fd)
    return os.path.basename(new)


def test_an_old_catalog_takes_the_steps(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    db = sqlite3.connect(state_dir / "catalog.db")
    for stmt in CORES.statements:  # a catalog from before the migrations ledger
        db.execute(stmt)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO cores (name, rule, pid, time, created, status) "
        "VALUES ('old', 'r', 1, 't', 1, 'failed: x')"
    )
    db.commit()
    db.close()
    os.chmod(state_dir / "catalog.db", 0o600)
    with Catalog(state_dir) as cat:
        assert [e.name for e in cat.list()] == ["old"]
        with sqlite3.connect(state_dir / "catalog.db") as raw:
            steps = [r[0] for r in raw.execute("SELECT name FROM migrations ORDER BY applied")]
            assert steps == ["cores-1", "reports-1", "shipping-1"]
            assert raw.execute("SELECT COUNT(*) FROM shipping").fetchone()[0] == 0
    with Catalog(state_dir) as cat:  # a second open applies nothing twice
        assert len(cat.list()) == 1


def test_the_life_after_publication(catalog: Catalog) -> None:
    e = publish(catalog)
    (row,) = catalog.shipping.unfinished()
    assert row[0].id == e.id and row[1].stage == CAPTURE
    catalog.shipping.kept(e.id, ["ab" * 20, "cd" * 20], "ab" * 20, STORE)
    assert catalog.shipping.referenced_build_ids() == {"ab" * 20, "cd" * 20}
    new = compress_beside(e)
    assert catalog.shipping.compressed(e.id, e.name, new, data_bytes=8192, seconds=0.1)
    got = catalog.get(e.id)
    assert got.name == new and got.compression == "zstd" and not os.path.exists(e.path)
    assert got.build_ids == sorted(["ab" * 20, "cd" * 20])
    assert got.disk_bytes == os.stat(got.path).st_blocks * 512
    # its bundle in the outbox, queued, the uploader's state recorded, then stored
    with open(catalog.shipping.bundle_path(e.id), "wb") as f:
        f.write(b"bundle" * 1000)
    assert catalog.shipping.queued(e.id, "fleet/h/1-core.snapd")
    catalog.shipping.save_upload_state(e.id, {"job": {"job_id": str(e.id)}, "parts": []}, 2, "cannot reach x")
    assert catalog.shipping.upload_states() == [{"job": {"job_id": str(e.id)}, "parts": []}]
    listed = catalog.list()[0]
    assert listed.upload == {"state": QUEUED, "key": "fleet/h/1-core.snapd", "attempts": 2,
                             "error": "cannot reach x", "uploaded_at": None}  # fmt: skip
    assert "build_ids" not in listed.to_dict(context=False)
    assert catalog.shipping.backlog()[0] == 1
    done = catalog.shipping.upload_done(e.id, ok=True, attempts=3, keep_local=False, now=1234.0)
    assert done is not None and done.status == "remote" and not os.path.exists(done.path)
    assert not os.path.exists(catalog.shipping.bundle_path(e.id))
    assert catalog.get(e.id).upload == {"state": "uploaded", "key": "fleet/h/1-core.snapd", "attempts": 3,
                                        "error": "", "uploaded_at": 1234.0}  # fmt: skip
    assert catalog.shipping.unfinished() == []
    assert catalog.shipping.referenced_build_ids() == set(), "a remote core needs no binaries here"
    assert [x.status for x in catalog.list()] == ["remote"]


def test_a_swap_for_an_entry_gone_meanwhile_removes_the_new_file(catalog: Catalog) -> None:
    e = publish(catalog)
    new = compress_beside(e)
    catalog.remove(e.id)
    assert not catalog.shipping.compressed(e.id, e.name, new, 1, 0.0)
    assert not os.path.exists(os.path.join(catalog.cores_dir, new))


def test_a_bundle_job_killed_mid_write_leaves_nothing_in_the_outbox(catalog: Catalog) -> None:
    """Retention kills the store job of an entry it removes; a bundle being written then is
    only its temp file (snapd.atomicfile), which drop_bundle removes too, and only that one."""
    from snapd.atomicfile import AtomicFile

    e, other = publish(catalog, after=STORE), publish(catalog, after=STORE)
    outbox = catalog.shipping.outbox_dir
    half = AtomicFile(catalog.shipping.bundle_path(e.id))
    half.write(b"half a bundle")  # then SIGKILL: never published, never closed by its writer
    kept = AtomicFile(catalog.shipping.bundle_path(other.id))
    kept.write(b"the other entry's, still being written")
    catalog.shipping.drop_bundle(e.id)
    assert os.listdir(outbox) == [os.path.basename(kept.tmp)]
    half.close()
    kept.close()


def test_the_upload_state_of_a_removed_entry_is_not_written_back(catalog: Catalog) -> None:
    e = publish(catalog, after=UPLOAD)
    with open(catalog.shipping.bundle_path(e.id), "wb") as f:
        f.write(b"x")
    assert catalog.shipping.queued(e.id, "k")
    catalog.remove(e.id)
    assert not os.path.exists(catalog.shipping.bundle_path(e.id)), "its bundle goes with it"
    catalog.shipping.save_upload_state(e.id, {"job": {}}, 1, "")
    assert catalog.shipping.upload_states() == [] and catalog.shipping.rows() == {}
    assert catalog.shipping.upload_done(e.id, ok=True) is None


@pytest.mark.parametrize("stage", [CAPTURE, STORE, UPLOAD, DONE])
def test_an_entry_removed_before_its_upload_says_so(
    catalog: Catalog, caplog: pytest.LogCaptureFixture, stage: str
) -> None:
    # With uploads configured, an entry removed while its binaries or its bundle are still
    # being written never reaches the object store either: the same line as a queued one.
    catalog.shipping.uploads = True
    e = publish(catalog, after=UPLOAD if stage == UPLOAD else stage)
    if stage == UPLOAD:
        with open(catalog.shipping.bundle_path(e.id), "wb") as f:
            f.write(b"x")
        assert catalog.shipping.queued(e.id, "k")
    with caplog.at_level("WARNING", logger="snapd.store"):
        catalog.remove(e.id)
    said = f"core {e.id} removed before it was uploaded" in caplog.text
    assert said == (stage != DONE), caplog.text


def test_without_uploads_a_removed_entry_on_its_way_says_nothing(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    e = publish(catalog, after=STORE)  # compression only
    with caplog.at_level("WARNING", logger="snapd.store"):
        catalog.remove(e.id)
    assert "before it was uploaded" not in caplog.text


def test_retention_counts_the_bundle_and_the_binaries_kept(state_dir: Path) -> None:
    own: dict[str, int] = {"11" * 20: 64 << 10}
    unlimited = Retention(max_use=None, keep_free=None)
    with Catalog(state_dir, unlimited, elf_bytes=lambda b: own.get(b, 0)) as cat:
        a = publish(cat, "keep", DONE)
        b = publish(cat, "keep", DONE)
        cat.shipping.kept(a.id, ["11" * 20], "", DONE)
        cat.shipping.kept(b.id, ["11" * 20], "", DONE)
        with open(cat.shipping.bundle_path(b.id), "wb") as f:
            f.write(os.urandom(32 << 10))
        assert cat.shipping.queued(b.id, "k")
        # a's core alone fits 12 KiB; b carries its bundle and the kept file it uses last
        cat.retention = Retention(max_use=ByteLimit(200 << 10), keep_free=None)
        assert cat.vacuum() == []
        cat.retention = Retention(max_use=ByteLimit(100 << 10), keep_free=None)
        gone = cat.vacuum()
        assert [e.id for e in gone] == [a.id, b.id]
        assert not os.path.exists(cat.shipping.bundle_path(b.id))


def test_recovery_finishes_an_interrupted_swap(state_dir: Path) -> None:
    cat = Catalog(state_dir, Retention(max_use=None, keep_free=None))
    before = publish(cat, after=STORE)
    after = publish(cat, after=STORE)
    leftover = compress_beside(before)  # compressed, swap never committed: the .zst goes
    new = compress_beside(after)
    with sqlite3.connect(state_dir / "catalog.db") as raw:  # swapped, original not yet removed
        raw.execute("UPDATE cores SET name = ? WHERE id = ?", (new, after.id))
    stray = os.path.join(cat.shipping.outbox_dir, "core-99.snapd")
    open(stray, "wb").close()
    cat.close()
    with Catalog(state_dir, Retention(max_use=None, keep_free=None)) as cat:
        names = sorted(os.listdir(cat.cores_dir))
        assert names == sorted([before.name, new]), names
        assert leftover not in names and after.name not in names
        assert os.listdir(cat.shipping.outbox_dir) == []
        assert not cat.recovery.orphans
        assert {e.id for e, _ in cat.shipping.unfinished()} == {before.id, after.id}


def test_outbox_is_a_directory_of_ours(catalog: Catalog) -> None:
    st = os.stat(catalog.shipping.outbox_dir)
    assert oct(st.st_mode & 0o777) == "0o700" and st.st_uid == os.geteuid()


def test_a_full_disk_met_recording_the_kept_binaries_is_tried_again(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog's UPDATE meets ENOSPC (a full-disk test saw it): the record is retried when
    due, from what the capture found, and the entry's work goes on (it had stopped there: the
    core was never bundled nor uploaded)."""
    from snapd.daemon.aftercore import AfterCore, Task
    from snapd.daemon.config import DaemonConfig
    from snapd.sandbox import Result
    from snapd.ship.metrics import Metrics
    from snapd.store.errors import StoreError

    e = publish(catalog)
    after = AfterCore(catalog, DaemonConfig(), Metrics())
    real = catalog.shipping.kept
    calls: list[tuple[object, ...]] = []

    def kept(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise StoreError("catalog.db: database or disk is full")
        real(*args)

    monkeypatch.setattr(catalog.shipping, "kept", kept)
    build_id = "ab" * 20
    after._capture_done(Task(e.id), Result({"build_ids": [build_id], "exe_build_id": build_id}, 0.1, 0, ""))
    (task,) = after.capture.queue
    assert task.core_id == e.id and task.due > 0
    assert catalog.shipping.rows([e.id])[e.id].stage == CAPTURE
    after.tick(task.due)  # no new capture: the record again
    assert after.capture.idle and not after.capture.queue and len(calls) == 2
    row = catalog.shipping.rows([e.id])[e.id]
    assert row.stage == DONE and row.exe_build_id == build_id
