"""Bundles of real cores: a victim compiled into a temp dir, cored with snapd's writer, bundled,
its binary deleted (or replaced), then opened with `snapd debug` in gdb and drgn."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from snapd.core import write_core
from snapd.ship import sparse
from snapd.ship.bundle import open_bundle, read_manifest, write_bundle
from snapd.ship.compress import compress_core
from snapd.ship.elfcache import ElfCache
from snapd.ship.elfid import file_build_id, read_core_files
from snapd.ship.elfsource import Chain, HostFiles
from snapd.ship.errors import CacheError
from support.gdb import GDB_QUIET
from support.ship import build, build_in

pytestmark = pytest.mark.kernel


@pytest.fixture
def cored(tmp_path, spawn):
    """(exe, core) of ship_victim run from a directory of its own."""
    exe = build_in(tmp_path / "app")
    v = spawn([exe])
    core = tmp_path / "core"
    write_core(v.pid, str(core))
    return exe, core


def debug(
    snapd_cmd: list[str], bundle: Path, *args: str, debugger: str = "gdb"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*snapd_cmd, "debug", str(bundle), "--debugger", debugger, "--", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_bundle_opens_with_backtraces_after_the_binaries_are_deleted(cored, snapd_cmd, tmp_path):
    exe, core = cored
    r = subprocess.run(
        [*snapd_cmd, "bundle", str(core), "-o", str(tmp_path / "b.snapd")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    b = tmp_path / "b.snapd"
    assert b.stat().st_mode & 0o777 == 0o600
    m = read_manifest(str(b))
    assert m.exe == str(exe) and m.comm == exe.name
    paths = {f.path for f in m.files}
    assert str(exe) in paths and any("/libc.so" in p for p in paths)
    assert all(f.verified for f in m.files)
    assert m.build_ids[str(exe)] == file_build_id(str(exe))
    shutil.rmtree(exe.parent)  # the program's binaries are gone
    out = debug(snapd_cmd, b, *GDB_QUIET, "-ex", "thread apply all bt", "-ex", "info sharedlibrary")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    for fn in ("ship_victim_leaf_wait", "ship_victim_middle", "main", "ship_victim_worker_wait"):
        assert fn in text, text
    libs = [ln for ln in out.stdout.splitlines() if "libc.so" in ln and ln.startswith("0x")]
    assert libs and all("/snapd-bundle-" in ln for ln in libs), out.stdout  # the bundle's libc
    assert not [n for n in os.listdir("/var/tmp") if n.startswith("snapd-bundle-") and n in out.stdout], (
        "temp dir left behind"
    )


def test_drgn_reads_a_bundle(cored, snapd_cmd, tmp_path):
    exe, core = cored
    b = tmp_path / "b.snapd"
    write_bundle(str(core), str(b))
    exe.unlink()
    code = "for t in prog.threads():\n for f in t.stack_trace(): print(f.name)"
    out = debug(snapd_cmd, b, "-q", "-e", code, debugger="drgn")
    assert "ship_victim_leaf_wait" in out.stdout, out.stdout + out.stderr


def test_records_and_sparse_unpack(cored, tmp_path):
    _, core = cored
    b = tmp_path / "b.snapd"
    entry = {"id": 7, "rule": "ship-test", "name": "core.ship"}
    context = {"status": {"State": "S"}}
    report = {"threads": [{"frames": ["ship_victim_leaf_wait"]}]}
    m = write_bundle(str(core), str(b), entry=entry, context=context, report=report, name="core.ship")
    assert m.records == ["entry", "context", "report"] and m.name == "core.ship"
    u = open_bundle(str(b), str(tmp_path / "u"))
    assert (u.entry, u.context, u.report) == (entry, context, report)
    assert os.stat(u.core).st_size == core.stat().st_size
    assert sparse.disk_bytes(u.core) <= core.stat().st_blocks * 512 + (1 << 20)  # holes stayed holes
    assert subprocess.run(["cmp", "-s", str(core), u.core]).returncode == 0
    assert u.exe and u.exe.startswith(u.sysroot) and os.access(u.exe, os.X_OK)
    for dirpath, dirs, _files in os.walk(u.root):
        assert os.stat(dirpath).st_mode & 0o777 == 0o700, dirpath
        assert not any(os.path.islink(os.path.join(dirpath, d)) for d in dirs)


def test_a_replaced_binary_is_left_out_unless_the_elf_cache_kept_it(cored, snapd_cmd, tmp_path):
    exe, core = cored
    cache = ElfCache(str(tmp_path / "elfcache"))
    for f in read_core_files(str(core)).files:  # what the daemon does at capture time
        if f.build_id:
            cache.keep(f.path, f.build_id)
    build(exe, tag="two, a different build")  # an "upgrade": same path, another build-id
    m = write_bundle(str(core), str(tmp_path / "host.snapd"))
    assert [x.path for x in m.missing] == [str(exe)]
    assert "replaced since" in m.missing[0].reason
    b = tmp_path / "cache.snapd"
    m = write_bundle(str(core), str(b), elf_source=Chain(cache, HostFiles()))
    assert not m.missing and str(exe) in {f.path for f in m.files}
    exe.unlink()
    out = debug(snapd_cmd, b, *GDB_QUIET, "-ex", "bt")
    assert "ship_victim_middle" in out.stdout, out.stdout + out.stderr


def test_exe_option_is_checked_by_build_id(cored, snapd_cmd, tmp_path):
    exe, core = cored
    moved = tmp_path / "moved"
    shutil.copy(exe, moved)
    exe.unlink()
    m = write_bundle(str(core), str(tmp_path / "ok.snapd"), exe=str(moved))
    assert str(exe) in {f.path for f in m.files}
    other = build_in(tmp_path / "other", tag="other")
    r = subprocess.run(
        [*snapd_cmd, "bundle", str(core), "--exe", str(other), "-o", str(tmp_path / "x.snapd")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is not the core's executable" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.snapd").exists()


def test_inspect_and_debug_take_compressed_cores_and_bundles(cored, snapd_cmd, tmp_path):
    exe, core = cored
    z = compress_core(str(core))
    b = tmp_path / "b.snapd"
    write_bundle(z.path, str(b))  # a bundle can be made from a compressed core too
    for f in (core, Path(z.path), b):
        r = subprocess.run(
            [*snapd_cmd, "inspect", "--json", str(f)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        v = json.loads(r.stdout)
        assert v["comm"] == exe.name and len(v["threads"]) == 2 and v["path"] == str(f)
    out = debug(snapd_cmd, Path(z.path), *GDB_QUIET, "-ex", "bt", str(exe))
    assert "ship_victim_leaf_wait" in out.stdout, out.stdout + out.stderr


def test_inspect_stacks_reads_a_bundle_with_its_own_binaries(cored, snapd_cmd, tmp_path):
    """`snapd inspect --stacks` of a bundle, where the binaries no longer exist, names the
    program's functions from the bundled executable, and is headed by the file given (not the
    temporary core it was unpacked to)."""
    exe, core = cored
    b = tmp_path / "b.snapd"
    write_bundle(str(core), str(b))
    z = compress_core(str(core))
    shutil.rmtree(exe.parent)  # the program's binaries are gone

    def stacks(f: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*snapd_cmd, "inspect", "--stacks", f], capture_output=True, text=True, timeout=120
        )

    r = stacks(str(b))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"{b}:", r.stdout
    for fn in ("ship_victim_leaf_wait", "ship_victim_middle", "main"):
        assert fn in r.stdout, r.stdout
    r = stacks(z.path)
    assert r.stdout.splitlines()[0] == f"{z.path}:", r.stdout + r.stderr


DATA_MAPPER = """
import mmap, sys
f = open(sys.argv[1], "r+b")
kept = [mmap.mmap(f.fileno(), 0), mmap.mmap(-1, 1 << 20)]  # a shared data file; shared anonymous
kept[1][:5] = b"hello"
print("ready", flush=True)
sys.stdin.read()
"""


def test_data_files_and_shared_memory_are_not_missing_binaries(spawn, tmp_path):
    """A bundle holds the ELF files a process ran. Its data mappings (a shared file, shared
    anonymous memory shown as /dev/zero (deleted), locale archives, PostgreSQL's /SYSV and
    /dev/shm segments) were listed as left out, "not on this host" or "the core holds no
    build-id for it", one line each on every bundle and every snapd debug."""
    data = tmp_path / "table.dat"
    data.write_bytes(b"\0" * (1 << 16))
    py = os.path.realpath("/usr/bin/python3")
    v = spawn([py, "-c", DATA_MAPPER, str(data)])
    core = tmp_path / "core"
    write_core(v.pid, str(core))
    m = write_bundle(str(core), str(tmp_path / "b.snapd"))
    assert m.missing == [], m.missing
    paths = {f.path for f in m.files}
    assert py in paths and any("/libc.so" in p for p in paths), paths
    assert str(data) not in paths


def test_a_deleted_executable_is_said_to_be_deleted(spawn, tmp_path):
    exe = build(tmp_path / "app" / "ship_victim")
    v = spawn([exe])
    exe.unlink()
    core = tmp_path / "core"
    write_core(v.pid, str(core))
    m = write_bundle(str(core), str(tmp_path / "b.snapd"))
    why = {f.path: f.reason for f in m.missing}
    assert why == {str(exe): "deleted while the process ran; pass --exe with a copy of it"}, why


def test_elf_cache_dedups_links_and_copies(tmp_path):
    exe = build_in(tmp_path / "a")
    c = ElfCache(str(tmp_path / "cache"))
    k1 = c.keep(str(exe))
    assert k1.how == "link" and os.stat(k1.path).st_ino == exe.stat().st_ino  # same file system
    assert c.keep(str(exe), k1.build_id).how == "present"
    assert c.usage().files == 1 and c.usage().own_bytes == 0  # shared with the original
    with pytest.raises(CacheError, match=r"not .* build-id|changed"):
        c.keep(str(exe), "00" * 20)
    if os.path.isdir("/dev/shm"):  # another file system: a copy (tmpfs has no reflink)
        other = ElfCache(f"/dev/shm/snapd-test-elfcache-{os.getpid()}")
        try:
            k2 = other.keep(str(exe))
            assert k2.how in ("copy", "reflink") and file_build_id(k2.path) == k1.build_id
            assert other.usage().own_bytes > 0
        finally:
            shutil.rmtree(other.directory)
    exe.unlink()
    assert c.usage().own_bytes > 0  # now only the cache holds it
    assert c.lookup(str(exe), k1.build_id)[0] == k1.path
    assert c.gc({k1.build_id}) == [] and c.gc(set()) == [k1.build_id] and c.usage().files == 0
