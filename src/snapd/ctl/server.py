"""The daemon side of ``snapd ctl``: a non-blocking Unix socket server for a selectors loop.

``CtlServer`` keeps its own epoll set and exposes its fd: register ``server.fileno()`` for
reading in the daemon's selector and call ``server.handle()`` when it is ready. Nothing in here
blocks: a handler that needs time (``snap``) returns a :class:`concurrent.futures.Future`, and the
reply is sent when it completes (a self-pipe wakes the loop).

Who may do what is decided per connection from the kernel's view of the peer
(:mod:`snapd.ctl.peer`); the socket file itself is 0660 root:snapd, so others cannot even
connect (:mod:`snapd.ctl.listener`). Each connection's state machine is
:mod:`snapd.ctl.connection`; what each command does, :mod:`snapd.ctl.dispatch`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import selectors
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from snapd.ctl.connection import Conn, Connections
from snapd.ctl.dispatch import CtlHandler, Request, dispatch
from snapd.ctl.listener import bind_socket
from snapd.ctl.peer import Peer, ensure_group, peer_of
from snapd.ctl.protocol import (
    COMMANDS,
    DEFAULT_GROUP,
    MAX_REQUEST,
    Access,
    Code,
    CtlError,
    error,
    ok,
    parse_request,
)
from snapd.errors import SnapdError
from snapd.store.catalog import Catalog
from snapd.store.errors import NoSuchCore

log = logging.getLogger("snapd.ctl")

__all__ = ["CtlHandler", "CtlServer", "Peer", "ensure_group"]


class CtlServer:
    """``CtlServer(path, handler, catalog)``: bind the socket (0660 root:``group``) now.

    Embed: ``selector.register(server.fileno(), EVENT_READ)``; call ``server.handle()`` when it
    is readable, and also on the daemon's periodic tick (idle clients expire there). All calls
    from the loop's thread; handlers may complete Futures from any thread.
    """

    def __init__(
        self,
        path: str,
        handler: CtlHandler,
        catalog: Catalog | None = None,
        *,
        group: str = DEFAULT_GROUP,
        mode: int = 0o660,
        max_request: int = MAX_REQUEST,
        max_clients: int = 64,
        idle_timeout: float = 60.0,
    ) -> None:
        self.path = os.path.abspath(path)
        self.handler = handler
        self.catalog = catalog
        self.max_request = max_request
        self.group_gid = ensure_group(group)
        self.group = group
        self._sel = selectors.EpollSelector()
        self._done: queue.SimpleQueue[tuple[Conn, Future[Any]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.conns = Connections(
            self._sel,
            self._wake_w,
            self._request,
            max_request=max_request,
            max_clients=max_clients,
            idle_timeout=idle_timeout,
        )
        self._sock = bind_socket(self.path, mode, self.group_gid)
        self._ino = os.stat(self.path, follow_symlinks=False).st_ino
        self._sel.register(self._sock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    def fileno(self) -> int:
        """One fd for the daemon's selector: readable when :meth:`handle` has work."""
        return self._sel.fileno()

    def close(self) -> None:
        self.conns.close_all()
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self._sock)
        self._sock.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path, follow_symlinks=False).st_ino == self._ino:
                os.unlink(self.path)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> CtlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop -----------------------------------------------------------------------------

    def handle(self, timeout: float = 0) -> None:
        """Process whatever is ready (waiting at most ``timeout`` seconds); never blocks on a
        client."""
        for key, mask in self._sel.select(timeout):
            try:
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    self._drain_wake()
                else:
                    conn = self.conns.by_fd.get(key.fd)
                    if conn is None:
                        continue
                    if mask & selectors.EVENT_READ:
                        self.conns.read(conn)
                    if mask & selectors.EVENT_WRITE and key.fd in self.conns.by_fd:
                        self.conns.flush(conn)
            except Exception:
                # A bug in one request must not take the daemon's control socket down.
                log.exception("ctl: unexpected error")
                conn = self.conns.by_fd.get(key.fd)
                if conn is not None:
                    self.conns.drop(conn)
        self.conns.expire()

    def serve_forever(self, stop: Callable[[], bool] = lambda: False, tick: float = 0.5) -> None:
        """For tests and tools: loop until ``stop()`` is true."""
        while not stop():
            self.handle(tick)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("ctl: cannot accept: %s", err.strerror)
                    return
                raise
            sock.setblocking(False)
            try:
                peer = peer_of(sock, self.group_gid)
            except OSError:
                sock.close()
                continue
            conn = self.conns.add(sock, peer)
            if peer.access is Access.NONE:
                log.info(
                    "ctl: refused pid %d uid %d (not root, not in group %s)", peer.pid, peer.uid, self.group
                )
                self.conns.reply(conn, error(Code.DENIED, self._denied_msg("use the ctl socket")))
                conn.closing = True
                self.conns.flush(conn)

    def _denied_msg(self, what: str) -> str:
        return f"permission denied: only root may {what}; members of group '{self.group}' may only read"

    def _request(self, conn: Conn, line: bytes) -> None:
        try:
            cmd, args = parse_request(line)
            need = COMMANDS[cmd][0]
            if conn.peer.access < need:
                raise CtlError(self._denied_msg(f"run '{cmd}'"), Code.DENIED)
            result = dispatch(cmd, Request(args, conn.peer, self.handler, self.catalog))
        except NoSuchCore as err:
            self.conns.reply(conn, error(Code.NOT_FOUND, str(err)))
            return
        except CtlError as err:
            self.conns.reply(conn, error(err.code, str(err)))
            return
        except SnapdError as err:
            self.conns.reply(conn, error(Code.FAILED, str(err)))
            return
        except Exception as err:
            log.exception("ctl: %s failed", line[:200])
            self.conns.reply(conn, error(Code.INTERNAL, f"internal error: {type(err).__name__}: {err}"))
            return
        if isinstance(result, Future):
            conn.waiting = True
            result.add_done_callback(lambda fut: self._deferred_done(conn, fut))
        else:
            self.conns.reply(conn, ok(result))

    def _deferred_done(self, conn: Conn, fut: Future[Any]) -> None:
        # Runs in whatever thread completed the future: hand over to the loop.
        self._done.put((conn, fut))
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        self.conns.run_again()
        while True:
            try:
                conn, fut = self._done.get_nowait()
            except queue.Empty:
                return
            conn.waiting = False
            if not self.conns.live(conn):
                continue  # the client went away meanwhile
            err = fut.exception()
            if err is None:
                self.conns.reply(conn, ok(fut.result()))
            elif isinstance(err, SnapdError):
                self.conns.reply(conn, error(getattr(err, "code", Code.FAILED), str(err)))
            else:
                log.error("ctl: deferred request failed: %r", err)
                self.conns.reply(conn, error(Code.INTERNAL, f"internal error: {type(err).__name__}: {err}"))
            self.conns.process(conn)
            self.conns.settle(conn)
