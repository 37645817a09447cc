"""Programs nobody here wrote (redis-server from Debian) and a module with a package note."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from snapd.report import render_text, run_report, where
from support.gdb import gdb_backtraces
from support.proc import context_of
from support.redis import redis_server
from support.report import dump, functions, thread_of

pytestmark = pytest.mark.kernel

PACKAGE = {
    "type": "deb",
    "name": "snapd-rpt",
    "version": "1.2-3",
    "architecture": "amd64",
    "osCpe": "cpe:/o:debian:debian_linux:12",
}


@pytest.fixture
def redis(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    with redis_server(exe, tmp_path) as proc:
        yield proc


def test_redis_server(redis, tmp_path):
    core = dump(redis.pid, tmp_path / "core.redis")
    rep = run_report(str(core), context=context_of(redis.pid))
    assert rep["error"] is None, rep["error"]
    main = thread_of(rep, redis.pid)
    assert main["name"] == "redis-server"
    assert {t["name"] for t in rep["threads"]} >= {"bio_close_file", "bio_lazy_free"}
    assert {"aeMain", "main"} <= set(functions(main)), functions(main)
    assert functions(main)[0] == "epoll_wait"
    assert where(rep) == "aeMain"
    exe = os.path.realpath("/usr/bin/redis-server")
    gdb = gdb_backtraces(exe, core)
    for tid, names in gdb.items():
        # gdb and drgn may pick different aliases of a libc symbol (clone3, __clone3;
        # __GI___futex_abstimed_wait_cancelable64, __futex_abstimed_wait_common): compare
        # the public names
        mine = {n.lstrip("_") for n in functions(thread_of(rep, tid))}
        theirs = {n for n in names if n != "??" and not n.startswith("_")}
        assert theirs <= mine, (tid, theirs - mine)
    bio = [t for t in rep["threads"] if "bioProcessBackgroundJobs" in functions(t)]
    assert len(bio) >= 2
    text = render_text(rep)
    assert f"Stack trace of thread {redis.pid} (redis-server):" in text
    assert any(m["path"] == exe and m["build_id"] for m in rep["modules"])


def test_package_note(compile_victim, spawn, tmp_path):
    # ld >= 2.39 writes the note (.note.package), as Fedora's and systemd's builds do
    meta = "--package-metadata=" + json.dumps(PACKAGE, separators=(",", ":"))
    exe = compile_victim("threads", "-Xlinker", meta)
    v = spawn([exe])
    core = dump(v.pid, tmp_path / "core.pkg")
    rep = run_report(str(core))
    assert rep["error"] is None, rep["error"]
    mod = next(m for m in rep["modules"] if m["path"] == str(exe))
    assert mod["package"] == PACKAGE
    assert f"Module {exe} from deb snapd-rpt 1.2-3 (amd64), build-id {mod['build_id']}" in render_text(rep)
    assert all(m["package"] is None for m in rep["modules"] if m["path"] != str(exe))
    # the note is read from the core's copy of the header page, not only from the file
    Path(exe).rename(str(exe) + ".moved")
    try:
        rep = run_report(str(core))
        mod = next(m for m in rep["modules"] if m["path"] == str(exe))
        assert mod["package"] == PACKAGE
    finally:
        Path(str(exe) + ".moved").rename(exe)
