"""The control socket against hostile clients.

Already proven against a CtlServer with a daemon-like handler (tests/ctl): the socket is
0660 root:snapd; group members may list/info/status/rules but not rm/pause/resume/reload/snap;
an outsider cannot connect, and is refused by the SO_PEERCRED check even on a 0666 socket;
13 kinds of malformed lines get bad-request and the connection keeps working; a 200 KiB line is
refused; idle, half-sent and abandoned clients are dropped; 3 pipelined requests are answered
in order.

Here, against the real daemon: the same access rules end to end (nothing changes when they are
refused), and floods: binary garbage, truncated requests, multi-MiB lines, and 100k pipelined
requests from a client that never reads its replies (before the fix the daemon buffered every
reply: hundreds of MiB, and other clients waited seconds). The daemon keeps serving others
promptly and its memory does not balloon."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapd.ctl import CtlServer
from snapd.ctl.client import Client
from snapd.store import Catalog, Retention
from support.ctl import DaemonLikeHandler, take
from support.daemon import DaemonHarness, syscall_rule
from support.hostile import NOBODY, Hostile
from support.proc import vm_kib
from support.waiting import scaled, wait_for

PROMPT_S = scaled(2.0)  # another client's request is answered within this, whatever a flooder does


def raw(path: str, timeout: float = 10) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def send_all_ignoring_close(s: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
        s.sendall(data)


def read_to_eof(s: socket.socket, limit: int = 64 << 20) -> bytes:
    buf = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while len(buf) < limit:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    return buf


def served_promptly(path: str) -> float:
    t0 = time.monotonic()
    with Client(path, timeout=30) as c:
        assert c.call("status") is not None
    return time.monotonic() - t0


class Flooder(threading.Thread):
    """Sends ``line`` as fast as the socket accepts it, never reading a reply."""

    def __init__(self, path: str, line: bytes, count: int) -> None:
        super().__init__(daemon=True)
        self.sock = raw(path, timeout=0.2)
        self.data = line * count
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        view = memoryview(self.data)
        while self.sent < len(self.data) and not self.stop.is_set():
            try:
                self.sent += self.sock.send(view[self.sent : self.sent + (1 << 16)])
            except TimeoutError:
                continue  # blocked: the server is not reading (back-pressure)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        self.sock.close()


def snapd_gid() -> int:
    return grp.getgrnam("snapd").gr_gid


_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("errno", e.errno); sys.exit(0)
s.sendall(sys.argv[2].encode() + b"\\n")
print("reply", s.recv(65536).decode().strip())
"""


def as_user(groups: list[int], path: str, request: str) -> str:
    r = subprocess.run(
        [sys.executable, "-c", _CONNECT, path, request],
        user=NOBODY,
        group=groups[0] if groups else NOBODY,
        extra_groups=groups,
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.kernel
def test_access_and_floods_on_the_real_daemon(sec_daemon: DaemonHarness, hostile: Hostile) -> None:
    d = sec_daemon
    v = hostile("plain")
    d.write_rule("r.yaml", syscall_rule("r", v.pid))
    d.start()
    v.cmd("g 1")
    (core,) = wait_for(lambda: d.complete("r"), 20, "a first core")

    # -- who gets what ------------------------------------------------------------------------
    import errno

    assert as_user([], d.socket, '{"cmd":"list-cores"}') == f"errno {errno.EACCES}"
    member = [snapd_gid()]
    for cmd in (
        '{"cmd":"list-cores"}',
        '{"cmd":"status"}',
        '{"cmd":"rules"}',
        f'{{"cmd":"info","args":{{"id":{core["id"]}}}}}',
    ):
        reply = json.loads(as_user(member, d.socket, cmd).removeprefix("reply "))
        assert reply["ok"] is True, (cmd, reply)
    for cmd in (
        f'{{"cmd":"rm","args":{{"id":{core["id"]}}}}}',
        f'{{"cmd":"snap","args":{{"pid":{v.pid}}}}}',
        '{"cmd":"pause"}',
        '{"cmd":"resume"}',
        '{"cmd":"reload"}',
    ):
        reply = json.loads(as_user(member, d.socket, cmd).removeprefix("reply "))
        assert reply["ok"] is False and reply["code"] == "denied", (cmd, reply)
    st = d.status()
    assert st["paused"]["paused"] is False
    assert [c["id"] for c in d.cores()] == [core["id"]] and os.path.exists(core["path"])

    # -- malformed, binary, truncated, huge ---------------------------------------------------
    hwm0 = vm_kib(d.pid, "VmHWM")
    rng = __import__("random").Random(6)
    for _ in range(20):  # binary garbage with and without newlines
        c = raw(d.socket)
        send_all_ignoring_close(c, bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 20000))))
        c.shutdown(socket.SHUT_WR)
        for line in read_to_eof(c).splitlines():
            assert json.loads(line)["ok"] is False
        c.close()
    for cut in (1, 7, 15, 30):  # truncated, then the client leaves
        c = raw(d.socket)
        c.sendall(b'{"cmd":"info","args":{"id":1}}'[:cut])
        c.close()
    for size in (4 << 20, 8 << 20):  # one multi-MiB line, without and with its newline
        for tail in (b"", b"\n"):
            c = raw(d.socket)
            send_all_ignoring_close(c, b'{"cmd":"status","args":{"x":"' + b"A" * size + b'"}}' + tail)
            reply = read_to_eof(c).split(b"\n")[0]
            c.close()
            assert json.loads(reply)["code"] == "too-large"
    assert served_promptly(d.socket) < PROMPT_S

    # -- floods that never read their replies -------------------------------------------------
    floods = [
        Flooder(d.socket, b'{"cmd":"list-cores"}\n', 100_000),
        Flooder(d.socket, b'{"cmd":"status"}\n', 100_000),
        Flooder(d.socket, b"\n", 4_000_000),
        Flooder(d.socket, b"x" * 60_000 + b"\n", 200),
    ]
    for f in floods:
        f.start()
    try:
        wait_for(lambda: all(f.sent > 64 << 10 for f in floods[:2]), 10, "the floods to be under way")
        worst = max(served_promptly(d.socket) for _ in range(5))
        assert worst < PROMPT_S, f"another client waited {worst:.1f}s"
        v.cmd("g 1")  # and the daemon still takes cores meanwhile
        wait_for(lambda: len(d.complete("r")) == 2, 30, "a core during the floods")
        grown = (vm_kib(d.pid, "VmHWM") - hwm0) >> 10
        assert grown < 48, f"the daemon's peak RSS grew {grown} MiB"
        assert all(f.sent < len(f.data) for f in floods[:2]), "back-pressure: the flooders are blocked"
    finally:
        for f in floods:
            f.close()
    assert served_promptly(d.socket) < PROMPT_S
    assert d.status()["paused"]["paused"] is False
    v.cmd("p")


# -- the same fix at the unit level: fast, and without the daemon -------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[], CtlServer]]:
    import tempfile

    d = tempfile.mkdtemp(prefix="snapd-sc-", dir="/tmp")
    cat = Catalog(tmp_path / "state", Retention(max_use=None, keep_free=None))
    for _ in range(30):
        take(cat)  # list-cores replies of ~20 KiB each
    handler = DaemonLikeHandler(cat)
    srv = CtlServer(os.path.join(d, "c.sock"), handler, cat)
    stop = threading.Event()
    t = threading.Thread(target=srv.serve_forever, args=(stop.is_set, 0.02), daemon=True)
    t.start()
    yield lambda: srv
    stop.set()
    t.join(10)
    srv.close()
    handler.pool.shutdown(wait=True)
    cat.close()
    os.rmdir(d)


@pytest.mark.slow
def test_pipelining_client_is_held_back(server: Callable[[], CtlServer]) -> None:
    srv = server()
    f = Flooder(srv.path, b'{"cmd":"list-cores"}\n', 50_000)
    f.start()
    try:
        peak = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for c in list(srv.conns.by_fd.values()):
                peak = max(peak, len(c.outbuf) + len(c.inbuf))
            time.sleep(0.01)
        assert peak < 3 << 20, f"{peak} bytes buffered for one client"
        assert served_promptly(srv.path) < PROMPT_S
    finally:
        f.close()
    # A client that pipelines and does read gets every reply, in order.
    c = raw(srv.path)
    c.sendall(b"".join(b'{"cmd":"info","args":{"id":%d}}\n' % (i % 30 + 1) for i in range(500)))
    c.shutdown(socket.SHUT_WR)
    replies = [json.loads(x) for x in read_to_eof(c).splitlines()]
    c.close()
    assert [r["result"]["id"] for r in replies] == [i % 30 + 1 for i in range(500)]


NASTY = [
    # (request line, what the reply's error says); each was an internal error with a traceback
    # in the daemon's log before the fix (any snapd-group member could flood the log with them)
    (b'{"cmd":"info","args":{"id":99999999999999999999999}}', "out of range"),
    (b'{"cmd":"rm","args":{"id":-99999999999999999999999}}', "out of range"),
    (b'{"cmd":"list-cores","args":{"pid":99999999999999999999999}}', "out of range"),
    (b'{"cmd":"snap","args":{"pid":99999999999999999999999}}', "out of range"),
    (b'{"cmd":"list-cores","args":{"since":1e999}}', "out of range"),
    (b'{"cmd":"list-cores","args":{"since":NaN}}', "NaN is not a number"),
    (b'{"cmd":"list-cores","args":{"since":-Infinity}}', "Infinity is not a number"),
    (b'{"cmd":"list-cores","args":{"rule":"\\ud800"}}', "not valid Unicode"),
    (b'{"cmd":"snap","args":{"pid":1,"content":"x\\udfff"}}', "not valid Unicode"),
    (b'{"cmd":"pause","args":{"reason":"\\ud800"}}', "not valid Unicode"),
    (b"[" * 100_00 + b"]" * 100_00, "nested too deeply"),
    (b'{"cmd":"list-cores","args":' + b'{"a":' * 5000 + b"1" + b"}" * 5001, "nested too deeply"),
    (b'{"cmd":"info","args":{"id":1},"cmd":"rm"}', "duplicate key 'cmd'"),
    (b'{"cmd":"rm","args":{"id":1,"id":2}}', "duplicate key 'id'"),
    (b'{"cmd":"list-cores","args":{"pid":1e400}}', "wrong type"),
    (b'{"cmd":"list-cores","args":{"pid":' + b"9" * 5000 + b"}}", "not JSON"),
]


def test_values_no_handler_can_take_are_bad_requests(
    server: Callable[[], CtlServer], caplog: pytest.LogCaptureFixture
) -> None:
    srv = server()
    c = raw(srv.path)
    for line, why in NASTY:
        c.sendall(line + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            buf += c.recv(65536)
        reply = json.loads(buf)
        assert reply["ok"] is False and reply["code"] == "bad-request", (line[:80], reply)
        assert why in reply["error"], (line[:80], reply)
    c.close()
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the daemon's log"
    assert srv.catalog is not None and len(srv.catalog.list()) == 30, "nothing was removed"
    assert served_promptly(srv.path) < PROMPT_S
