"""redis-server from Debian, a program nobody here wrote, started on a directory of a test's own:
no TCP port (``--port 0``), a unix socket ``DIR/redis.sock``, no saving or append-only file of its
own, killed by pid at the end."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from snapd import procfs
from support.waiting import scaled, wait_for


def redis_socket(d: Path) -> Path:
    return d / "redis.sock"


@contextlib.contextmanager
def redis_server(exe: str | Path, d: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Runs ``exe`` (redis-server, or a link to it under another name) until it accepts
    connections and has started its background threads."""
    log = d / "redis.log"
    argv = [str(exe), "--port", "0", "--unixsocket", str(redis_socket(d)), "--save", "", "--appendonly", "no"]
    argv += ["--logfile", str(log), "--dir", str(d), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: log.exists() and "ready to accept connections" in log.read_text(), 30, "redis ready")
        wait_for(lambda: len(procfs.tids(proc.pid)) >= 4, 30, "redis threads")
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def redis_command(path: Path, *words: str) -> bytes:
    """One command in RESP (the redis protocol) to the server at unix socket ``path``; the reply."""
    req = f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(scaled(30))
        s.connect(str(path))
        s.sendall(req)
        return s.recv(4096)
