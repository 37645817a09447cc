"""Uploads to a real S3 server (SeaweedFS), with its faults: down when a job is queued, killed in
the middle of a multipart upload, wrong credentials, a missing bucket; then the fleet view."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from snapd.core import write_core
from snapd.ship.bundle import write_bundle
from snapd.ship.config import load_upload_config
from snapd.ship.errors import ConfigError
from snapd.ship.s3 import make_client
from snapd.ship.upload import Uploader, UploadResult, job_for
from snapd.ship.uploadstate import JsonStateStore
from support.gdb import GDB_QUIET
from support.ship import build_in
from support.waiting import wait_for

MiB = 1 << 20
FAST = {"retry_min": 0.2, "retry_max": 1.0}


def payload(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def entry(i: int, **kw: Any) -> dict[str, Any]:
    e = {
        "name": f"core.ship.{i}",
        "rule": "ship-rule",
        "pid": 4242,
        "comm": "ship victim/\u00e9",
        "exe": "/usr/bin/ship_victim",
        "build_id": "ab" * 20,
        "time": "2026-11-27T01:05:18.123Z",
    }
    e.update(kw)
    return e


class Run:
    """An uploader with a results queue and its JSON state file."""

    def __init__(self, cfg_path: Path, state: Path, **kw: Any) -> None:
        self.cfg = load_upload_config(str(cfg_path))
        self.results: queue.Queue[UploadResult] = queue.Queue()
        self.state = JsonStateStore(str(state))
        self.up = Uploader(self.cfg, self.state, on_result=self.results.put, **kw)
        self.up.start()

    def result(self, timeout: float = 120) -> UploadResult:
        return self.results.get(timeout=timeout)

    def stop(self) -> None:
        self.up.stop()


def objects(w: Any, prefix: str = "fleet/") -> dict[str, int]:
    r = w.client().list_objects_v2(Bucket=w.bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for o in r.get("Contents", [])}


def sha_of(w: Any, key: str) -> str:
    return hashlib.sha256(w.client().get_object(Bucket=w.bucket, Key=key)["Body"].read()).hexdigest()


def test_config_errors_name_file_line_col(tmp_path):
    p = tmp_path / "snapd.yaml"
    p.write_text("retention: {}\nupload:\n  bucket: cores\n  endpont: http://x\n")
    with pytest.raises(ConfigError, match=r"snapd.yaml:4:3: upload: unknown key 'endpont'"):
        load_upload_config(str(p))
    p.write_text("upload:\n  bucket: cores\n  part_size: 1MiB\n")
    with pytest.raises(ConfigError, match=r":3:14: upload.part_size must be at least 5MiB"):
        load_upload_config(str(p))
    cred = tmp_path / "s3.ini"
    cred.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    cred.chmod(0o644)
    p.write_text(f"upload:\n  bucket: cores\n  credentials: {cred}\n")
    with pytest.raises(ConfigError, match=r":3:16: .*mode 0644; chmod 600 it"):
        load_upload_config(str(p))
    cred.chmod(0o600)
    cfg = load_upload_config(str(p))
    assert cfg.bucket == "cores" and cfg.read_credentials().access_key == "a"  # type: ignore[union-attr]


def test_small_and_multipart_uploads_with_metadata(weed, upload_yaml, tmp_path):
    cfg_path = upload_yaml(weed, multipart_threshold="5MiB", part_size="5MiB")
    small, big = tmp_path / "small.snapd", tmp_path / "big.snapd"
    sums = {1: payload(small, 300_000), 2: payload(big, 23 * MiB)}
    run = Run(cfg_path, tmp_path / "state.json")
    try:
        run.up.submit(job_for(run.cfg, 1, str(small), entry(1)))
        run.up.submit(job_for(run.cfg, 2, str(big), entry(2)))
        got = {r.job_id: r for r in (run.result(), run.result())}
    finally:
        run.stop()
    assert got["1"].ok and not got["1"].multipart and got["2"].ok and got["2"].multipart, got
    host = run.cfg.host
    for i in (1, 2):
        key = f"fleet/{host}/{i}-core.ship.{i}.snapd"
        assert got[str(i)].key == key and sha_of(weed, key) == sums[i]
        meta = weed.client().head_object(Bucket=weed.bucket, Key=key)["Metadata"]
        assert meta["rule"] == "ship-rule" and meta["pid"] == "4242" and meta["build-id"] == "ab" * 20
        assert meta["host"] == host and meta["snapd-id"] == str(i)
    assert not weed.client().list_multipart_uploads(Bucket=weed.bucket).get("Uploads")
    assert run.state.load_all() == [] and run.up.backlog() == (0, 0)


def test_fleet_list_and_fetch(weed, upload_yaml, tmp_path, snapd_cmd):
    cfg_path = upload_yaml(weed)
    b = tmp_path / "x.snapd"
    digest = payload(b, 4096)
    run = Run(cfg_path, tmp_path / "state.json")
    try:
        run.up.submit(job_for(run.cfg, 77, str(b), entry(77)))
        assert run.result().ok
    finally:
        run.stop()
    r = subprocess.run(
        [*snapd_cmd, "fleet", "list", "--config", str(cfg_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rows = {x["key"]: x for x in json.loads(r.stdout)}
    key = f"fleet/{run.cfg.host}/77-core.ship.77.snapd"
    assert rows[key]["comm"] == "ship victim/\u00e9" and rows[key]["id"] == "77" and rows[key]["size"] == 4096
    r = subprocess.run(
        [
            *snapd_cmd,
            "fleet",
            "list",
            "--config",
            str(cfg_path),
            "--host",
            run.cfg.host,
            "--since",
            "2026-11-27T01:00Z",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and key in r.stdout and "ship victim" in r.stdout, r.stderr
    r = subprocess.run(
        [*snapd_cmd, "fleet", "list", "--config", str(cfg_path), "--host", "nohost"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.strip() == "No cores found."
    out = tmp_path / "fetched.snapd"
    r = subprocess.run(
        [*snapd_cmd, "fleet", "fetch", key, "-o", str(out), "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest and out.stat().st_mode & 0o777 == 0o600
    r = subprocess.run(
        [*snapd_cmd, "fleet", "fetch", "fleet/none", "-o", str(tmp_path / "n"), "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "no such object" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "n").exists()


def test_store_down_when_queued_then_back(fresh_weed, upload_yaml, tmp_path, caplog):
    cfg_path = upload_yaml(fresh_weed, **FAST)
    b = tmp_path / "down.snapd"
    digest = payload(b, 100_000)
    fresh_weed.kill()
    caplog.set_level(logging.WARNING, "snapd.ship.upload")
    run = Run(cfg_path, tmp_path / "state.json")
    try:
        run.up.submit(job_for(run.cfg, 5, str(b), entry(5)))  # returns at once: never blocks
        wait_for(
            lambda: any("cannot reach" in m for m in caplog.messages), 60, "an unreachable-store warning"
        )
        wait_for(lambda: run.state.load_all() and run.state.load_all()[0].attempts >= 2, 60, "retries")
        assert run.up.backlog()[0] == 1
        fresh_weed.start()
        res = run.result()
    finally:
        run.stop()
    assert res.ok and res.attempts >= 3
    assert sha_of(fresh_weed, res.key) == digest
    assert sum("cannot reach" in m for m in caplog.messages) == 1  # one line, not one per retry
    assert run.state.load_all() == []


def test_store_killed_mid_multipart_resumes_after_a_restart(fresh_weed, upload_yaml, tmp_path):
    cfg_path = upload_yaml(fresh_weed, multipart_threshold="5MiB", part_size="5MiB", **FAST)
    b = tmp_path / "big.snapd"
    digest = payload(b, 38 * MiB)  # 8 parts
    calls: list[int] = []

    def killing_client(cfg: Any) -> Any:
        """The real client; the store dies (SIGKILL) as part 4 is being sent."""
        c = make_client(cfg)
        real = c.upload_part

        def upload_part(**kw: Any) -> Any:
            calls.append(kw["PartNumber"])
            if kw["PartNumber"] == 4 and fresh_weed.proc is not None:
                fresh_weed.kill()
            return real(**kw)

        c.upload_part = upload_part
        return c

    state_file = tmp_path / "state.json"
    run = Run(cfg_path, state_file, client_factory=killing_client)
    try:
        run.up.submit(job_for(run.cfg, 9, str(b), entry(9)))
        wait_for(lambda: fresh_weed.proc is None, 60, "the store killed mid-upload")
        wait_for(lambda: run.state.load_all()[0].attempts >= 1, 60, "a failed attempt recorded")
    finally:
        run.stop()  # the daemon stops while the store is down
    before = JsonStateStore(str(state_file)).load_all()[0]
    assert before.upload_id and [p.number for p in before.parts] == [1, 2, 3]
    fresh_weed.start()
    sent: list[int] = []

    def counting_client(cfg: Any) -> Any:
        c = make_client(cfg)
        real = c.upload_part
        c.upload_part = lambda **kw: (sent.append(kw["PartNumber"]), real(**kw))[1]
        return c

    run2 = Run(cfg_path, state_file, client_factory=counting_client)  # a restarted daemon
    try:
        assert run2.up.resume_pending() == 1
        res = run2.result()
    finally:
        run2.stop()
    assert res.ok and res.multipart
    assert sorted(sent) == [4, 5, 6, 7, 8]  # parts 1-3 were not sent again: the same upload
    assert sha_of(fresh_weed, res.key) == digest
    keys = [k for k in objects(fresh_weed) if not k.endswith("index.json")]
    assert keys == [res.key]  # one complete object
    assert not fresh_weed.client().list_multipart_uploads(Bucket=fresh_weed.bucket).get("Uploads")


@pytest.mark.parametrize("fault", ["credentials", "bucket"])
def test_wrong_credentials_or_missing_bucket(weed, upload_yaml, tmp_path, caplog, fault):
    if fault == "credentials":
        cfg_path = upload_yaml(weed, key="wrongkey", secret="wrongsecret", **FAST)
        expect = "rejected the credentials (InvalidAccessKeyId)"
    else:
        cfg_path = upload_yaml(weed, bucket="ship-missing", **FAST)
        expect = "bucket 'ship-missing' does not exist"
    b = tmp_path / "f.snapd"
    payload(b, 1000)
    caplog.set_level(logging.WARNING, "snapd.ship.upload")
    run = Run(cfg_path, tmp_path / "state.json")
    try:
        run.up.submit(job_for(run.cfg, 11, str(b), entry(11)))
        wait_for(lambda: run.state.load_all()[0].attempts >= 3, 60, "three failed attempts")
        lines = [m for m in caplog.messages if expect in m]
        assert len(lines) == 1, caplog.messages  # one clear line
        assert "\n" not in lines[0] and run.up.backlog()[0] == 1  # kept, retried later
        assert not [r for r in caplog.records if r.exc_info]  # no traceback
        if fault == "bucket":
            weed.client().create_bucket(Bucket="ship-missing")
            run.up.wake()
            res = run.result()
            assert res.ok
    finally:
        run.stop()


@pytest.mark.kernel
def test_a_core_goes_to_the_store_and_debugs_elsewhere(weed, upload_yaml, tmp_path, spawn, snapd_cmd):
    """The issue's "done when": bundle here, upload, fetch, and full backtraces once the
    program's binaries are gone."""
    exe = build_in(tmp_path / "app")
    v = spawn([exe])
    write_core(v.pid, str(tmp_path / "core"))
    b = tmp_path / "core.snapd"
    m = write_bundle(str(tmp_path / "core"), str(b))
    cfg_path = upload_yaml(weed)
    run = Run(cfg_path, tmp_path / "state.json")
    try:
        run.up.submit(job_for(run.cfg, 31, str(b), entry(31, build_id=m.build_ids[str(exe)])))
        res = run.result()
    finally:
        run.stop()
    assert res.ok
    shutil.rmtree(exe.parent)
    got = tmp_path / "fetched.snapd"
    r = subprocess.run(
        [*snapd_cmd, "fleet", "fetch", res.key, "-o", str(got), "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*snapd_cmd, "debug", str(got), "--", *GDB_QUIET, "-ex", "thread apply all bt"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "ship_victim_leaf_wait" in r.stdout and "ship_victim_worker_wait" in r.stdout, r.stdout + r.stderr
