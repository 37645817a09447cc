"""Every ctl client connection and its state machine: read, frame, answer, write, close.

Nothing here blocks, and no client can make the daemon hold more than a bounded amount for it
(tests/security/test_ctl_hostile.py):

- back-pressure: while more than :data:`OUTBUF_HIGH` bytes of replies are queued for a client,
  or a complete request of its is still unanswered, nothing more is read from it (the kernel's
  socket buffer then blocks the client), since each small request can cost a large reply;
- fairness: each round answers at most :data:`BATCH` requests per client, then serves others;
- a line longer than ``max_request`` gets one ``too-large`` reply and the connection closes;
- a client that never reads is dropped at :data:`MAX_OUTBUF`, an idle one after
  ``idle_timeout``, the idlest one when ``max_clients`` are connected.

A connection that is ``closing`` is read (and discarded) until its EOF, then half-closed once its
last reply is sent, so the client reads that reply and then EOF.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from snapd.ctl.peer import Peer
from snapd.ctl.protocol import Code, error

MAX_OUTBUF = 1 << 30
OUTBUF_HIGH = 1 << 20
BATCH = 128
DISCARD_CHUNKS = 16  # of 64 KiB: up to 1 MiB of a refused peer's data read per round


@dataclass
class Conn:
    sock: socket.socket
    peer: Peer
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    last: float = field(default_factory=time.monotonic)
    waiting: bool = False  # a deferred reply is outstanding: read no further requests
    closing: bool = False  # close once outbuf is flushed
    eof: bool = False


class Connections:
    """The clients of one server, registered in its selector ``sel`` (data ``"conn"``).

    ``answer(conn, line)`` handles one request line (it replies through :meth:`reply`, or marks
    the connection ``waiting`` for a deferred reply); ``wake_w`` is the server's self-pipe,
    written to be called again (:meth:`run_again`) in the next round.
    """

    def __init__(
        self,
        sel: selectors.BaseSelector,
        wake_w: int,
        answer: Callable[[Conn, bytes], None],
        *,
        max_request: int,
        max_clients: int,
        idle_timeout: float,
    ) -> None:
        self.sel = sel
        self.wake_w = wake_w
        self.answer = answer
        self.max_request = max_request
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.by_fd: dict[int, Conn] = {}
        self._again: dict[int, Conn] = {}  # fd -> connection with requests left to answer

    def add(self, sock: socket.socket, peer: Peer) -> Conn:
        if len(self.by_fd) >= self.max_clients:
            self.evict_idlest()
        conn = Conn(sock, peer)
        self.by_fd[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, "conn")
        return conn

    def live(self, conn: Conn) -> bool:
        """Still connected (not dropped since)."""
        fd = conn.sock.fileno()
        return fd >= 0 and self.by_fd.get(fd) is conn

    def close_all(self) -> None:
        for conn in list(self.by_fd.values()):
            self.drop(conn)

    def evict_idlest(self) -> None:
        idle = [c for c in self.by_fd.values() if not c.waiting]
        if idle:
            self.drop(min(idle, key=lambda c: c.last))

    def expire(self) -> None:
        now = time.monotonic()
        for conn in list(self.by_fd.values()):
            if not conn.waiting and now - conn.last > self.idle_timeout:
                self.drop(conn)

    def drop(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        self.by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()

    def read(self, conn: Conn) -> None:
        if conn.closing and not conn.eof:
            self._discard(conn)
            return
        if conn.eof or len(conn.outbuf) > OUTBUF_HIGH or b"\n" in conn.inbuf:
            # Back-pressure: answer what we have before reading more.
            self.update_events(conn)
            return
        try:
            data = conn.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            self.drop(conn)
            return
        conn.last = time.monotonic()
        if not data:
            conn.eof = True
            if conn.inbuf.strip():
                conn.inbuf += b"\n"  # a last request without its newline
        conn.inbuf += data
        if conn.waiting and b"\n" not in conn.inbuf and len(conn.inbuf) > self.max_request:
            self.too_large(conn)  # a huge line sent while a slow request is outstanding
            return
        self.process(conn)
        self.settle(conn)

    def _discard(self, conn: Conn) -> None:
        """A refused or oversized peer gets its reply, nothing more is read. Up to
        DISCARD_CHUNKS per call: the daemon calls handle() once per loop turn (50 ms when rules
        are loaded), so a multi-MiB request must not take hundreds of turns to drain."""
        try:
            for _ in range(DISCARD_CHUNKS):
                if not conn.sock.recv(1 << 16):
                    conn.eof = True
                    break
        except BlockingIOError:
            pass
        except OSError:
            self.drop(conn)
            return
        if conn.eof and not conn.outbuf:
            self.drop(conn)
        else:
            self.update_events(conn)

    def settle(self, conn: Conn) -> None:
        """After the peer's EOF: close once every request has been answered and sent."""
        if self.by_fd.get(conn.sock.fileno()) is not conn:
            return
        if conn.eof and not conn.waiting and b"\n" not in conn.inbuf:
            if not conn.outbuf:
                self.drop(conn)
                return
            conn.closing = True
        self.update_events(conn)

    def defer(self, conn: Conn) -> None:
        """Answer the rest of ``conn``'s requests in a later round (the wake pipe makes the
        daemon's selector call the server's handle() again at once)."""
        self._again[conn.sock.fileno()] = conn
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")

    def run_again(self) -> None:
        again, self._again = self._again, {}
        for fd, conn in again.items():
            if self.by_fd.get(fd) is conn:
                self.process(conn)
                self.settle(conn)

    def process(self, conn: Conn) -> None:
        budget = BATCH
        while not conn.waiting and not conn.closing:
            if len(conn.outbuf) > OUTBUF_HIGH:
                break  # resumed by flush() once the client has read its replies
            nl = conn.inbuf.find(b"\n")
            if nl < 0:
                if len(conn.inbuf) > self.max_request:
                    self.too_large(conn)
                break
            if nl > self.max_request:
                self.too_large(conn)
                break
            if budget == 0:
                self.defer(conn)  # fairness: the other clients' turn first
                break
            budget -= 1
            line = bytes(conn.inbuf[:nl])
            del conn.inbuf[: nl + 1]
            if not line.strip():
                continue
            self.answer(conn, line)
        self.update_events(conn)

    def too_large(self, conn: Conn) -> None:
        conn.inbuf.clear()
        self.reply(conn, error(Code.TOO_LARGE, f"request larger than {self.max_request} bytes; refused"))
        conn.closing = True
        # The client's further sends now fail at once with EPIPE (net/unix/af_unix.c,
        # unix_stream_sendmsg: the peer's RCV_SHUTDOWN), instead of the daemon reading and
        # discarding the rest of a multi-MiB request; what is already queued is still drained
        # (closing with unread data would reset the connection before the reply is read).
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RD)
        self.flush(conn)

    def reply(self, conn: Conn, data: bytes) -> None:
        if len(conn.outbuf) + len(data) > MAX_OUTBUF:
            self.drop(conn)  # a client that never reads gets dropped, not buffered forever
            return
        conn.outbuf += data
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        if conn.sock.fileno() not in self.by_fd:
            return
        while conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except BlockingIOError:
                break
            except OSError:
                self.drop(conn)
                return
            del conn.outbuf[:n]
            conn.last = time.monotonic()
        if b"\n" in conn.inbuf and len(conn.outbuf) <= OUTBUF_HIGH and not (conn.waiting or conn.closing):
            self.defer(conn)  # the client read its replies: answer the requests held back
        if not conn.outbuf and conn.closing and not conn.waiting:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            if conn.eof:
                self.drop(conn)
                return
        self.update_events(conn)

    def update_events(self, conn: Conn) -> None:
        if self.by_fd.get(conn.sock.fileno()) is not conn:
            return
        # Read only what we are ready to answer (back-pressure); a closing peer is read (and
        # discarded) until its EOF.
        ready = len(conn.outbuf) <= OUTBUF_HIGH and b"\n" not in conn.inbuf
        read = not conn.eof and (conn.closing or ready)
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if conn.outbuf else 0)
        try:
            key: selectors.SelectorKey | None = self.sel.get_key(conn.sock)
        except KeyError:
            key = None
        with contextlib.suppress(KeyError, ValueError, OSError):
            if not events:
                if key is not None:
                    self.sel.unregister(conn.sock)
            elif key is None:
                self.sel.register(conn.sock, events, "conn")
            elif key.events != events:
                self.sel.modify(conn.sock, events, "conn")
