"""Malformed, huge, idle and abandoned clients never harm the server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.ctl import CtlError, CtlServer
from snapd.ctl.client import Client
from snapd.errors import SnapdError
from support.ctl import Served, take


def raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


_pending: dict[int, bytes] = {}


def read_line(s: socket.socket) -> dict[str, object]:
    """One reply line; bytes of later replies already received are kept for the next call."""
    buf = _pending.pop(s.fileno(), b"")
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    if rest:
        _pending[s.fileno()] = rest
    out: dict[str, object] = json.loads(line)
    return out


def read_to_eof(s: socket.socket) -> bytes:
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk


BAD = [
    b"not json",
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"cmd": 42}',
    b'{"cmd": "format-disk"}',
    b'{"cmd": "rm"}',
    b'{"cmd": "rm", "args": {"id": "1; rm -rf /"}}',
    b'{"cmd": "rm", "args": {"id": true}}',
    b'{"cmd": "info", "args": [1]}',
    b'{"cmd": "list-cores", "args": {"evil": 1}}',
    b'{"cmd": "list-cores", "args": {"pid": 1.5}}',
    b"\xff\xfe\x00garbage",
    b'{"cmd": "list-cores"' + b" " * 100,
]


def test_malformed_requests_rejected_server_keeps_serving(serve: Callable[..., Served]) -> None:
    s = serve()
    e = take(s.catalog)
    c = raw(s.path)
    for line in BAD:
        c.sendall(line + b"\n")
        reply = read_line(c)
        assert reply["ok"] is False and reply["code"] == "bad-request", (line, reply)
    # The same connection still works after all that.
    c.sendall(b'{"cmd": "list-cores"}\n')
    reply = read_line(c)
    assert reply["ok"] is True and [x["id"] for x in reply["result"]] == [e.id]  # type: ignore[index]
    c.close()
    assert os.path.exists(e.path)


def test_huge_request_refused_and_closed(serve: Callable[..., Served]) -> None:
    s = serve()
    c = raw(s.path)
    # The server may close while we are still sending: that is the point.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        c.sendall(b'{"cmd": "status", "args": {"x": "' + b"A" * (200 * 1024))
    data = read_to_eof(c)
    c.close()
    reply = json.loads(data.split(b"\n")[0])
    assert reply["ok"] is False and reply["code"] == "too-large"
    # A long line *with* a newline is refused too.
    c = raw(s.path)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        c.sendall(b'{"cmd":"status","x":"' + b"B" * (70 * 1024) + b'"}\n')
    assert json.loads(read_to_eof(c).split(b"\n")[0])["code"] == "too-large"
    c.close()
    with Client(s.path) as ok:
        assert ok.call("status")["rules"] == 1


def test_idle_and_abandoned_clients(serve: Callable[..., Served]) -> None:
    s = serve(max_clients=4)
    idle = [raw(s.path) for _ in range(8)]  # never send anything: evicted, not blocking
    half = raw(s.path)
    half.sendall(b'{"cmd": "stat')  # a partial line, then nothing
    gone = raw(s.path)
    gone.sendall(b'{"cmd": "list-cores"}\n')
    gone.close()  # leaves before reading the reply
    with Client(s.path) as c:
        assert c.call("status")["paused"] is False
    for sock in [*idle, half]:
        sock.close()
    with Client(s.path) as c:
        assert c.call("rules")[0]["name"] == "demo"


def test_request_without_newline_then_eof(serve: Callable[..., Served]) -> None:
    s = serve()
    c = raw(s.path)
    c.sendall(b'{"cmd": "status"}')
    c.shutdown(socket.SHUT_WR)
    reply = json.loads(read_to_eof(c))
    assert reply["ok"] is True
    c.close()


def test_pipelined_requests_answered_in_order(serve: Callable[..., Served]) -> None:
    s = serve()
    s.handler.snap_gate.set()
    c = raw(s.path)
    c.sendall(b'{"cmd":"snap","args":{"pid":7}}\n{"cmd":"status"}\n{"cmd":"rules"}\n')
    first, second, third = read_line(c), read_line(c), read_line(c)
    assert first["result"]["pid"] == 7  # type: ignore[index]
    assert "paused" in second["result"]  # type: ignore[operator]
    assert isinstance(third["result"], list)
    c.close()


def test_handler_errors_reported_server_survives(serve: Callable[..., Served]) -> None:
    s = serve()
    s.handler.fail_with = SnapdError("rules directory unreadable")
    with Client(s.path) as c, pytest.raises(CtlError, match="rules directory unreadable"):
        c.call("status")
    s.handler.fail_with = RuntimeError("bug")
    with Client(s.path) as c, pytest.raises(CtlError, match="internal error: RuntimeError: bug"):
        c.call("status")
    s.handler.fail_with = None
    with Client(s.path) as c:
        assert c.call("status")["rules"] == 1


def test_refuses_to_replace_non_socket(tmp_path: Path, serve: Callable[..., Served]) -> None:
    s = serve()
    f = Path(os.path.dirname(s.path)) / "file.sock"
    f.write_text("precious")
    with pytest.raises(CtlError, match="not a socket"):
        CtlServer(str(f), s.handler, s.catalog)
    assert f.read_text() == "precious"
    with pytest.raises(CtlError, match="already listening"):
        CtlServer(s.path, s.handler, s.catalog)


def test_stale_socket_replaced_and_removed_on_close(serve: Callable[..., Served]) -> None:
    s = serve()
    stale = os.path.join(os.path.dirname(s.path), "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(stale)
    dead.close()  # the file stays, nobody listens: a daemon that was SIGKILLed
    srv = CtlServer(stale, s.handler, s.catalog)
    try:
        assert stat.S_ISSOCK(os.stat(stale).st_mode)
        srv.handle(0)
    finally:
        srv.close()
    assert not os.path.exists(stale)


def test_fileno_works_in_a_selector(serve: Callable[..., Served], tmp_path: Path) -> None:
    # How the daemon embeds it: one fd in its own selector, handle() when readable.
    import selectors
    import threading

    s = serve()
    path = os.path.join(os.path.dirname(s.path), "embedded.sock")
    srv = CtlServer(path, s.handler, s.catalog)
    sel = selectors.DefaultSelector()
    sel.register(srv.fileno(), selectors.EVENT_READ)
    result: list[object] = []

    def client() -> None:
        with Client(path) as c:
            result.append(c.call("rules"))

    t = threading.Thread(target=client)
    t.start()
    try:
        while t.is_alive() or not result:
            for _key, _mask in sel.select(0.1):
                srv.handle()
            if not t.is_alive() and not result:
                break
    finally:
        t.join(10)
        sel.close()
        srv.close()
    assert result and result[0][0]["name"] == "demo"  # type: ignore[index]
