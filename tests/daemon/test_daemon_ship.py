"""The daemon with its configuration file (issue 13): compression at rest, the binaries kept,
`ctl export` and `ctl debug`, metrics, and uploads to a real S3 server (SeaweedFS, started and
killed by the tests) through its outages. Every test provokes each of its events once."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.daemon import DaemonHarness, DVictim, syscall_rule
from support.paths import VICTIMS
from support.victims import Victim
from support.waiting import scaled, wait_for
from support.weed import BUCKET, KEY, SECRET, Weed

pytestmark = pytest.mark.kernel

GDB_QUIET = ["-nx", "-batch", "-iex", "set debuginfod enabled off"]
MiB = 1 << 20


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipd_exe() -> Iterator[Path]:
    """tests/victims/shipd_victim.c, built in a directory of its own (a test deletes it)."""
    d = Path(tempfile.mkdtemp(prefix="snapd-shipd-", dir="/tmp"))
    os.chmod(d, 0o755)
    exe = d / "shipd_victim"
    src = VICTIMS / "shipd_victim.c"
    cc = ["gcc", "-g", "-O0", "-pthread", "-fno-omit-frame-pointer"]
    subprocess.run([*cc, "-o", str(exe), str(src)], check=True)
    yield exe
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shipd(spawn: Callable[..., Victim], shipd_exe: Path) -> Callable[..., DVictim]:
    def start(random_mib: int = 0, exe: Path | None = None) -> DVictim:
        path = exe or shipd_exe
        argv = [str(path)] + ([str(random_mib)] if random_mib else [])
        return DVictim(spawn(argv), path)

    return start


class Config:
    """Writes the daemon's configuration file (and its credentials) the way root installs them."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "etc"
        self.dir.mkdir(mode=0o755)
        self.path = self.dir / "snapd.yaml"

    def credentials(self, key: str = KEY, secret: str = SECRET) -> Path:
        p = self.dir / f"s3-{key}.ini"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
        return p

    def write(self, text: str) -> Path:
        self.path.write_text(text)
        os.chmod(self.path, 0o644)
        return self.path

    def upload(self, w: Weed, *, bucket: str = BUCKET, key: str = KEY, secret: str = SECRET,
               extra: str = "", upload_extra: str = "") -> Path:  # fmt: skip
        cred = self.credentials(key, secret)
        return self.write(
            "upload:\n"
            f"  endpoint: {w.endpoint}\n"
            f"  bucket: {bucket}\n"
            "  prefix: fleet\n"
            f"  credentials: {cred}\n"
            "  retry_min: 0.5\n"
            "  retry_max: 2\n"
            f"{upload_extra}"
            f"{extra}"
        )


@pytest.fixture
def config(workdir: Path) -> Config:
    return Config(workdir)


# --- helpers ----------------------------------------------------------------------------------


def one_core(daemon: DaemonHarness, v: DVictim, rule: str) -> dict[str, Any]:
    """Load a rule on ``v``, fire it once, and return its complete entry."""
    daemon.write_rule(f"{rule}.yaml", syscall_rule(rule, v.pid))
    wait_for(lambda: rule in {r.get("name") for r in daemon.rules_list()}, 60, f"rule {rule} loaded")
    v.cmd("g 1")
    return wait_for(lambda: (daemon.complete(rule) or [None])[0], 120, f"the core of {rule}")  # type: ignore[return-value]


def entry(daemon: DaemonHarness, core_id: int) -> dict[str, Any]:
    return json.loads(daemon.ctl("info", str(core_id), "--json").stdout)  # type: ignore[no-any-return]


def listed(daemon: DaemonHarness, core_id: int) -> dict[str, Any] | None:
    for c in daemon.cores():
        if c["id"] == core_id:
            return c
    return None


def attempts(daemon: DaemonHarness, core_id: int) -> int:
    """How many times its upload was tried (0 before it is queued)."""
    return int((((listed(daemon, core_id) or {}).get("upload")) or {}).get("attempts") or 0)


def upload_state(daemon: DaemonHarness, core_id: int) -> str:
    c = listed(daemon, core_id)
    return str(((c or {}).get("upload") or {}).get("state", ""))


def objects(w: Weed, prefix: str = "fleet/") -> dict[str, int]:
    r = w.client().list_objects_v2(Bucket=w.bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for o in r.get("Contents", []) if not o["Key"].endswith("index.json")}


def outbox(daemon: DaemonHarness) -> list[str]:
    d = daemon.state / "outbox"
    return sorted(os.listdir(d)) if d.exists() else []


def debug_bt(snapd_cmd: list[str], path: str | Path) -> str:
    r = subprocess.run(
        [*snapd_cmd, "debug", str(path), "--", *GDB_QUIET, "-ex", "thread apply all bt"],
        capture_output=True, text=True, timeout=scaled(180), check=False,
    )  # fmt: skip
    return r.stdout + r.stderr


def shipping_row(daemon: DaemonHarness, core_id: int) -> dict[str, Any]:
    """The catalog's shipping row, read as a second reader (WAL: never blocks the daemon)."""
    db = sqlite3.connect(f"file:{daemon.state / 'catalog.db'}?mode=ro", uri=True, timeout=30)
    try:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM shipping WHERE core_id = ?", (core_id,)).fetchone()
        return dict(row) if row else {}
    finally:
        db.close()


# --- the configuration file -------------------------------------------------------------------


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


def test_a_bad_config_file_is_one_line_per_error(
    daemon: DaemonHarness, config: Config, snapd_cmd: list[str]
) -> None:
    path = config.write("retention:\n  max_use: 4Q\ncompress: gzip\n")
    where = ["--rules", str(daemon.rules), "--state", str(daemon.state), "--socket", daemon.socket]
    r = run(*snapd_cmd, "daemon", "--config", str(path), *where)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"snapd daemon: {path}:2:12: retention.max_use: bad size '4Q'"), r.stderr
    assert lines[1] == f"snapd daemon: {path}:3:11: compress: 'gzip' is not one of none, zstd", r.stderr
    assert len(lines) == 2 and "Traceback" not in r.stderr
    c = run(*snapd_cmd, "check", str(path))
    assert c.returncode == 1
    assert c.stdout.splitlines() == [line.removeprefix("snapd daemon: ") for line in lines]
    os.chmod(path, 0o664)
    r = run(*snapd_cmd, "check", "--config", str(path))
    assert r.returncode == 1 and "refused: mode 0664 lets group or others write it" in r.stdout, r.stdout
    os.chmod(path, 0o644)
    config.write("compress: zstd\nretention: {max_use: 1G, max_age: 7d}\nreport: {max_threads: 8}\n")
    r = run(*snapd_cmd, "check", str(path))
    assert (r.returncode, r.stdout) == (0, f"{path}: ok\n"), r.stdout + r.stderr


# --- compression, kept binaries, export, debug, metrics ---------------------------------------


def test_compressed_core_kept_binaries_export_and_metrics(
    daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim], shipd_exe: Path,
    snapd_cmd: list[str], workdir: Path,
) -> None:  # fmt: skip
    # A binary of the test's own, deleted once the core is taken: only the daemon's ELF cache
    # still has it when the bundle is exported.
    own = workdir / "bin" / "shipd_victim"
    own.parent.mkdir()
    shutil.copy2(shipd_exe, own)
    prom = workdir / "metrics" / "snapd.prom"
    prom.parent.mkdir()
    config.write(f"compress: zstd\nmetrics:\n  textfile: {prom}\n  interval: 1s\n")
    daemon.start("--config", str(config.path))
    v = shipd(exe=own)
    e = one_core(daemon, v, "shipz")
    done = wait_for(lambda: (x := entry(daemon, e["id"]))["compression"] == "zstd" and x, 120, "compression")
    assert isinstance(done, dict)
    plain = e["path"].removesuffix(".zst")  # listed before or after the swap
    assert done["path"] == plain + ".zst"
    assert not os.path.exists(plain), "the plain core is removed once the entry points at .zst"
    assert done["disk_bytes"] == os.stat(done["path"]).st_blocks * 512
    assert done["build_ids"], "the binaries the core maps are kept"
    assert sorted(os.listdir(done["elf_cache"])) == sorted(done["build_ids"])
    info = daemon.ctl("info", str(e["id"])).stdout
    assert "Stored: zstd" in info and "kept by build-id" in info
    # snapd inspect reads it transparently
    r = run(*snapd_cmd, "inspect", done["path"])
    assert r.returncode == 0 and "shipd_victim" in r.stdout, r.stdout + r.stderr
    # ctl debug: a compressed core, through a sparse copy, with the kept binaries
    r = daemon.ctl("debug", str(e["id"]), "-A", shlex.join([*GDB_QUIET, "-ex", "thread apply all bt"]),
                   timeout=scaled(180))  # fmt: skip
    assert "shipd_victim_parked" in r.stdout, r.stdout + r.stderr
    # The binary goes (an upgrade, a rebuild, a cleanup): the bundle still has it, by build-id.
    own.unlink()
    bundle = workdir / "exported.snapd"
    r = daemon.ctl("export", str(e["id"]), "-o", str(bundle), timeout=scaled(180))
    assert bundle.exists(), r.stdout + r.stderr
    assert "left out" not in r.stderr or str(own) not in r.stderr, r.stderr
    bt = debug_bt(snapd_cmd, bundle)
    assert "shipd_victim_parked" in bt and "main" in bt, bt
    assert "No symbol table" not in bt, bt
    # metrics: the core, its freeze, the rule's events; the textfile kept current
    text = daemon.ctl("metrics").stdout
    assert 'snapd_cores_total{rule="shipz"} 1.0' in text, text
    assert 'snapd_events_fired_total{rule="shipz"} 1.0' in text, text
    assert 'snapd_freeze_seconds_count{rule="shipz"} 1.0' in text, text
    assert 'snapd_disk_bytes{what="elf_cache"}' in text, text
    wait_for(lambda: prom.exists() and 'snapd_cores_total{rule="shipz"} 1.0' in prom.read_text(), 30,
             "the textfile")  # fmt: skip
    assert oct(prom.stat().st_mode & 0o777) == "0o644"


# --- uploads ----------------------------------------------------------------------------------


def test_every_core_goes_to_the_store_as_a_bundle(
    daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim], weed: Weed,
    snapd_cmd: list[str], workdir: Path,
) -> None:  # fmt: skip
    config.upload(weed, extra="compress: zstd\n")
    daemon.start("--config", str(config.path))
    cores = [one_core(daemon, shipd(), rule) for rule in ("shipup-a", "shipup-b")]
    for c in cores:
        wait_for(lambda c=c: upload_state(daemon, c["id"]) == "uploaded", 120, f"core {c['id']} uploaded")
    host = os.uname().nodename
    objs = objects(weed)
    for c in cores:
        e = entry(daemon, c["id"])
        key = e["upload"]["key"]
        assert key == f"fleet/{host}/{c['id']}-{c['name'].removesuffix('.zst')}.snapd", key
        assert key in objs
        head = weed.client().head_object(Bucket=weed.bucket, Key=key)
        meta = head["Metadata"]
        assert meta["rule"] == c["rule"] and meta["pid"] == str(c["pid"]) and meta["snapd-id"] == str(c["id"])
        assert meta["host"] == host and meta["comm"] == "shipd_victim" and meta["build-id"]
        assert e["status"] == "complete" and os.path.exists(e["path"]), "keep_local is true by default"
    assert outbox(daemon) == [], "a bundle leaves the outbox once stored"
    table = daemon.ctl("list-cores").stdout
    assert "UPLOAD" in table.splitlines()[0] and table.count("uploaded") == 2, table
    # what was stored is a bundle snapd debug opens, with backtraces
    got = workdir / "fetched.snapd"
    key = entry(daemon, cores[0]["id"])["upload"]["key"]
    weed.client().download_file(weed.bucket, key, str(got))
    bt = debug_bt(snapd_cmd, got)
    assert "shipd_victim_parked" in bt, bt


def test_the_store_down_when_a_core_is_taken(
    daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim], fresh_weed: Weed,
) -> None:  # fmt: skip
    config.upload(fresh_weed)
    fresh_weed.stop()
    daemon.start("--config", str(config.path))
    c = one_core(daemon, shipd(), "shipdown")
    wait_for(lambda: attempts(daemon, c["id"]) >= 2, 60, "retries while the store is down")
    assert upload_state(daemon, c["id"]) == "queued"
    assert "queued (retry" in daemon.ctl("list-cores").stdout
    fresh_weed.start()
    wait_for(lambda: upload_state(daemon, c["id"]) == "uploaded", 120, "the upload once the store is back")
    assert list(objects(fresh_weed)) == [entry(daemon, c["id"])["upload"]["key"]]
    log = daemon.log_text()
    assert log.count("cannot reach") == 1, log  # one line, not one per retry


def test_the_store_killed_mid_multipart_and_the_daemon_restarted(
    daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim], fresh_weed: Weed,
) -> None:  # fmt: skip
    config.upload(fresh_weed, upload_extra="  part_size: 5MiB\n  multipart_threshold: 5MiB\n")
    daemon.start("--config", str(config.path))
    c = one_core(daemon, shipd(random_mib=64), "shipkill")  # ~13 parts: it does not compress

    # Kill the store once some parts are stored (the daemon records each one in the catalog).
    def some_parts() -> dict[str, Any] | None:
        raw = shipping_row(daemon, c["id"]).get("upload_state")
        st = json.loads(raw) if raw else {}
        return st if len(st.get("parts", [])) >= 2 else None

    before = wait_for(some_parts, 120, "two parts stored")
    fresh_weed.kill()
    assert isinstance(before, dict)
    nparts = -(-before["size"] // before["part_size"])
    assert len(before["parts"]) < nparts, "the upload ended before the store was killed; rerun"
    wait_for(lambda: "cannot reach" in daemon.log_text(), 60, "the outage seen")
    daemon.stop()
    fresh_weed.start()
    daemon.start()  # the same configuration, state and catalog
    wait_for(lambda: upload_state(daemon, c["id"]) == "uploaded", 180, "the resumed upload")
    key = entry(daemon, c["id"])["upload"]["key"]
    s3 = fresh_weed.client()
    assert list(objects(fresh_weed)) == [key], "one complete object"
    head = s3.head_object(Bucket=fresh_weed.bucket, Key=key)
    assert head["ContentLength"] == before["size"]
    assert head["ETag"].strip('"').endswith(f"-{nparts}"), head["ETag"]  # one multipart upload's parts
    assert s3.list_multipart_uploads(Bucket=fresh_weed.bucket).get("Uploads", []) == []
    assert before["upload_id"] and "resumed" in daemon.log_text()


@pytest.mark.parametrize("fault", ["credentials", "bucket"])
def test_wrong_credentials_or_a_missing_bucket(
    daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim], weed: Weed, fault: str,
) -> None:  # fmt: skip
    if fault == "credentials":
        config.upload(weed, secret="not-the-secret")
        line = "rejected the credentials (SignatureDoesNotMatch)"
    else:
        config.upload(weed, bucket="no-such-bucket")
        line = "bucket 'no-such-bucket' does not exist"
    daemon.start("--config", str(config.path))
    c = one_core(daemon, shipd(), f"ship{fault}")
    wait_for(lambda: attempts(daemon, c["id"]) >= 3, 60, "three attempts")
    log = daemon.log_text()
    assert log.count(line) == 1, log  # one clear line, retried quietly
    assert daemon.status()["cores"] == 1, "the daemon runs on"
    e = entry(daemon, c["id"])
    assert e["upload"]["state"] == "queued" and line.split(" (")[0] in e["upload"]["error"]
    assert "Upload: queued" in daemon.ctl("info", str(c["id"])).stdout


def test_keep_local_false_drops_the_file_only_once_uploaded(
    daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim], fresh_weed: Weed,
) -> None:  # fmt: skip
    config.upload(fresh_weed, upload_extra="  keep_local: false\n")
    fresh_weed.stop()
    daemon.start("--config", str(config.path))
    c = one_core(daemon, shipd(), "shiplocal")
    wait_for(lambda: attempts(daemon, c["id"]) >= 2, 60, "retries")
    e = entry(daemon, c["id"])
    assert e["status"] == "complete" and os.path.exists(e["path"]), "never dropped before the upload"
    fresh_weed.start()
    wait_for(lambda: upload_state(daemon, c["id"]) == "uploaded", 120, "the upload")
    e = entry(daemon, c["id"])
    assert e["status"] == "remote" and not os.path.exists(e["path"])
    assert e["upload"]["key"] in objects(fresh_weed)
    assert "remote" in daemon.ctl("list-cores").stdout
    r = daemon.ctl("debug", str(c["id"]), check=False)
    assert r.returncode == 1 and "only in the object store now" in r.stderr, r.stderr


@pytest.fixture
def small_state(workdir: Path) -> Iterator[Path]:
    """The daemon's state directory on a 160 MiB file system of its own (a tmpfs)."""
    state = workdir / "state"
    state.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m,mode=0700", "snapd-test-state", str(state)],
                   check=True)  # fmt: skip
    yield state
    r = subprocess.run(["umount", str(state)], check=False, capture_output=True)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_the_disk_filling_while_uploads_queue(
    small_state: Path, daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim],
    fresh_weed: Weed,
) -> None:  # fmt: skip
    # Each entry costs ~2 x 32 MiB (its core and its bundle: random memory does not compress);
    # retention keeps 40 MiB free, so with the store down the third core pushes the first out.
    config.upload(fresh_weed, extra="retention:\n  max_use: infinity\n  keep_free: 40M\n")
    fresh_weed.stop()
    daemon.start("--config", str(config.path))
    cores = [one_core(daemon, shipd(random_mib=32), f"shipfull-{i}") for i in range(3)]
    # 3 x 64 MiB cannot fit in 160 MiB less 40: retention removes one, at whatever stage it is
    # (queued, or its binaries or bundle still being written), and says it was never uploaded.
    wait_for(lambda: not all(listed(daemon, c["id"]) for c in cores), 180, "retention making room")

    # Retention runs again as each bundle is written: it has settled once every entry still
    # listed has its bundle in the outbox and nothing is being dumped or bundled.
    def settled() -> bool:
        kept = [c for c in cores if listed(daemon, c["id"])]
        return daemon.idle() and all(f"core-{c['id']}.snapd" in outbox(daemon) for c in kept)

    wait_for(settled, 120, "every entry kept has its bundle queued")
    fresh_weed.start()

    # Retention may still remove one more as the last bundle lands (it runs right after a
    # bundle is published, which settled() can see first): whatever is listed gets uploaded.
    def uploaded() -> bool:
        return all(upload_state(daemon, c["id"]) == "uploaded" for c in cores if listed(daemon, c["id"]))

    wait_for(uploaded, 180, "every core still listed uploaded")
    left = [c for c in cores if listed(daemon, c["id"])]
    assert 0 < len(left) < len(cores), "retention removed an entry (and its bundle) to make room"
    log = daemon.log_text()
    for c in cores:
        if c not in left:
            assert f"core {c['id']} removed before it was uploaded" in log, log
    keys = {entry(daemon, c["id"])["upload"]["key"] for c in left}
    assert set(objects(fresh_weed)) == keys, "every core kept is uploaded, nothing else"
    assert outbox(daemon) == []
    assert not [n for n in os.listdir(small_state / "cores") if n.startswith(".snapd-partial")]


def test_a_full_disk_while_uploads_queue(
    small_state: Path, daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim],
    fresh_weed: Weed,
) -> None:  # fmt: skip
    # No retention limit: the third core, or its bundle, meets ENOSPC (and so may the catalog).
    config.upload(fresh_weed, extra="retention:\n  max_use: infinity\n  keep_free: 0\n")
    fresh_weed.stop()
    daemon.start("--config", str(config.path))
    cores = [one_core(daemon, shipd(random_mib=32), f"shipenospc-{i}") for i in range(2)]
    v = shipd(random_mib=32)
    daemon.write_rule("shipenospc-2.yaml", syscall_rule("shipenospc-2", v.pid))
    wait_for(lambda: "shipenospc-2" in {r.get("name") for r in daemon.rules_list()}, 60, "the third rule")
    v.cmd("g 1")
    third = wait_for(lambda: (daemon.cores("--rule", "shipenospc-2") or [None])[0], 120, "the third entry")
    assert isinstance(third, dict)
    wait_for(lambda: "no space left on device" in daemon.log_text().lower(), 120, "the disk full")
    assert daemon.status()["cores"] >= 2, "the daemon runs on"
    fresh_weed.start()
    complete = [c for c in daemon.cores() if c["status"] == "complete"]
    assert {c["id"] for c in cores} <= {c["id"] for c in complete}
    for c in complete:  # the third, when it was written, once the first two left room
        wait_for(lambda c=c: upload_state(daemon, c["id"]) == "uploaded", 240, f"core {c['id']} uploaded")
    keys = {entry(daemon, c["id"])["upload"]["key"] for c in complete}
    assert set(objects(fresh_weed)) == keys
    assert outbox(daemon) == []
    assert not [n for n in os.listdir(small_state / "cores") if n.startswith(".snapd-partial")]


def test_a_compressed_core_whose_bundle_was_not_written_is_uploaded_after_a_restart(
    daemon: DaemonHarness, config: Config, shipd: Callable[..., DVictim], weed: Weed,
    snapd_cmd: list[str], workdir: Path,
) -> None:  # fmt: skip
    config.write("compress: zstd\n")
    daemon.start("--config", str(config.path))
    c = one_core(daemon, shipd(), "shipresume")
    wait_for(lambda: entry(daemon, c["id"])["compression"] == "zstd", 120, "compression")
    daemon.stop()
    # As a daemon stopped between the two leaves it: compressed, its bundle still to write.
    with sqlite3.connect(daemon.state / "catalog.db") as db:
        db.execute("UPDATE shipping SET stage = 'store' WHERE core_id = ?", (c["id"],))
    config.upload(weed, extra="compress: zstd\n")
    daemon.start()
    wait_for(lambda: upload_state(daemon, c["id"]) == "uploaded", 120, "the upload")
    got = workdir / "resumed.snapd"
    weed.client().download_file(weed.bucket, entry(daemon, c["id"])["upload"]["key"], str(got))
    assert "shipd_victim_parked" in debug_bt(snapd_cmd, got)
    assert os.listdir(daemon.state / "tmp") == [], "the plain copy it was bundled from is gone"
