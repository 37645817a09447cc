"""ctl fixtures: a real CtlServer on a real Unix socket, served from a thread."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapd.ctl import CtlServer
from snapd.store import Catalog, Retention
from support.ctl import DaemonLikeHandler, Served


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # Short (sun_path is 108 bytes) and traversable by the unprivileged users the tests become.
    d = tempfile.mkdtemp(prefix="snapd-ctl-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def serve(tmp_path: Path, sock_dir: str) -> Iterator[Callable[..., Served]]:
    started: list[tuple[Served, threading.Event, threading.Thread]] = []

    def start(**kw: object) -> Served:
        cat = Catalog(tmp_path / f"state{len(started)}", Retention(max_use=None, keep_free=None))
        handler = DaemonLikeHandler(cat)
        path = os.path.join(sock_dir, f"ctl{len(started)}.sock")
        srv = CtlServer(path, handler, cat, **kw)  # type: ignore[arg-type]
        stop = threading.Event()
        t = threading.Thread(target=srv.serve_forever, args=(stop.is_set, 0.02), daemon=True)
        t.start()
        s = Served(srv, cat, handler, path)
        started.append((s, stop, t))
        return s

    yield start
    for s, stop, t in started:
        s.handler.snap_gate.set()
        stop.set()
        t.join(10)
        s.server.close()
        s.handler.pool.shutdown(wait=True)
        s.catalog.close()


@pytest.fixture
def ctl(snapd_cmd: list[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """ctl(socket, *args, as_user=(uid, gid, [groups]) | None) runs the real `snapd ctl`."""

    def run(
        socket_path: str, *args: str, as_user: tuple[int, int, list[int]] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        kw: dict[str, object] = {}
        if as_user is not None:
            uid, gid, groups = as_user
            kw = {"user": uid, "group": gid, "extra_groups": groups}
        env = {k: v for k, v in os.environ.items() if k != "SNAPD_SOCKET"}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [*snapd_cmd, "ctl", "--socket", socket_path, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd="/",
            **kw,
        )

    return run
