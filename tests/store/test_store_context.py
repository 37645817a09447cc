"""/proc context captured from live processes: fds with targets, limits, maps; never environ."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.errors import TargetGone
from snapd.procfs.context import MAX_FDS, capture, parse_limits, unit_of
from snapd.store import Catalog

VICTIM = textwrap.dedent(
    """
    import os, resource, socket, sys, threading, time
    n = int(sys.argv[2])
    if n > 900:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
    f = open(sys.argv[1], "w")
    s = socket.socketpair()
    keep = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_capture_live_process(tmp_path: Path, spawn: Callable[..., object], catalog: Catalog) -> None:
    marker = tmp_path / "open-me.log"
    env = dict(os.environ, SNAPD_TEST_SECRET="hunter2-do-not-store")
    v = spawn([sys.executable, "-c", VICTIM, str(marker), "3"], env=env)
    ctx = capture(v.pid)  # type: ignore[attr-defined]
    targets = [fd["target"] for fd in ctx["fds"]]
    assert str(marker) in targets
    assert any(t.startswith("socket:[") for t in targets)
    assert targets.count("/dev/null") >= 3
    assert ctx["fds_total"] == len(ctx["fds"])
    names = {lim["name"] for lim in ctx["limits"]}
    assert {"Max open files", "Max core file size"} <= names
    assert any("python" in line or "libc" in line for line in ctx["maps"])
    assert ctx["cgroups"] and isinstance(ctx["cgroup"], str)
    assert ctx["status"]["Pid"] == str(v.pid)  # type: ignore[attr-defined]
    assert ctx["threads_total"] == 2 and len(ctx["threads"]) == 2
    assert ctx["cmdline"][:2] == [sys.executable, "-c"]
    assert ctx["exe"] and ctx["cwd"] == os.getcwd()
    assert not ctx["errors"], ctx["errors"]
    blob = json.dumps(ctx)
    assert "hunter2-do-not-store" not in blob, "environ is never captured"
    assert "environ" not in ctx
    # Stored whole in the entry; identity fields taken from it.
    e = catalog.reserve(rule="r", pid=v.pid, context=ctx)  # type: ignore[attr-defined]
    got = catalog.get(e.id)
    assert got.context["fds_total"] == ctx["fds_total"]
    assert got.exe == ctx["exe"] and got.cmdline == ctx["cmdline"] and got.uid == os.getuid()


@pytest.mark.kernel
def test_fds_are_bounded(tmp_path: Path, spawn: Callable[..., object]) -> None:
    n = MAX_FDS + 500
    v = spawn([sys.executable, "-c", VICTIM, str(tmp_path / "f"), str(n)])
    ctx = capture(v.pid)  # type: ignore[attr-defined]
    assert len(ctx["fds"]) == MAX_FDS
    assert ctx["fds_total"] > MAX_FDS


def test_gone_process() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(TargetGone):
        capture(pid)


def test_parsers() -> None:
    text = (
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max cpu time              unlimited            unlimited            seconds   \n"
        "Max open files            1024                 524288               files     \n"
        "Max realtime timeout      unlimited            unlimited            us        \n"
    )
    lim = parse_limits(text)
    assert lim[1] == {"name": "Max open files", "soft": "1024", "hard": "524288", "units": "files"}
    assert unit_of("/system.slice/nginx.service") == "nginx.service"
    assert unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope") == "app-x.scope"
    assert unit_of("/") == ""
