"""The daemon side of ``snapd ctl``: a non-blocking Unix socket server for a selectors loop.

``CtlServer`` keeps its own epoll set and exposes its fd: register ``server.fileno()`` for
reading in the daemon's selector and call ``server.handle()`` when it is ready. Nothing in here
blocks: a handler that needs time (``snap``) returns a :class:`concurrent.futures.Future`, and the
reply is sent when it completes (a self-pipe wakes the loop).

Who may do what is decided per connection from the kernel's view of the peer (SO_PEERCRED and
SO_PEERGROUPS, socket(7)), not from anything the client says: uid 0 may do everything; members
of the ``snapd`` group may read (list-cores, info, status, rules); everyone else is refused.
(The daemon's own uid counts as root: it could ptrace the daemon anyway.)
The socket file itself is 0660 root:snapd, so others cannot even connect.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import queue
import selectors
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

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

# include/uapi/asm-generic/socket.h; Python's socket module lacks SO_PEERGROUPS (Linux 4.13).
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_MAX_OUTBUF = 1 << 30
# Back-pressure and fairness (tests/security/test_ctl_hostile.py): a client that pipelines
# requests without reading the replies must not make the daemon buffer them (each small
# request can cost a large reply), nor keep it busy while others wait. While more than
# _OUTBUF_HIGH bytes of replies are queued for a client, or a complete request of its is still
# unanswered, nothing more is read from it (the kernel's socket buffer then blocks the client);
# and each round answers at most _BATCH requests per client before serving the others.
_OUTBUF_HIGH = 1 << 20
_BATCH = 128

#: What a handler returns: a JSON-able value, or a Future of one for slow work.
Reply = Any


class CtlHandler(Protocol):
    """What the daemon implements for the commands that need more than the catalog.

    Each method returns a JSON-able value (or a ``Future`` of one) and may raise
    :class:`~snapd.errors.SnapdError`, whose message goes back to the client.
    """

    def status(self) -> Reply:
        """Rules, probes, events seen/suppressed, cores taken, paused?"""

    def rules(self) -> Reply:
        """The loaded rules and their state (a list of objects)."""

    def snap(self, pid: int, content: str | None, uid: int) -> Reply:
        """Take an on-demand snapshot of ``pid``; the catalog entry as a dict (via a Future)."""

    def pause(self, reason: str, uid: int) -> Reply:
        """Stop every freeze and dump (persist with :class:`snapd.store.PauseSwitch`)."""

    def resume(self, uid: int) -> Reply: ...

    def reload(self, uid: int) -> Reply:
        """Re-read the rules directory (as SIGHUP does)."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]
    access: Access


def ensure_group(name: str = DEFAULT_GROUP) -> int | None:
    """The gid of ``name``, creating it with ``groupadd --system`` if root and it is missing."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("cannot create group %s (%s); only root can use the ctl socket", name, err)
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def peer_of(sock: socket.socket, group_gid: int | None) -> Peer:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    groups: tuple[int, ...] = ()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    except OSError:
        # More than 256 groups (ERANGE) or an old kernel: the peer's Groups: line instead.
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    groups = tuple(int(g) for g in line.split()[1:])
    if uid in (0, os.geteuid()):
        # The daemon's own uid could ptrace or kill it anyway: nothing more to protect. (It is
        # root in production; an unprivileged development daemon is run by its user.)
        access = Access.ADMIN
    elif group_gid is not None and (gid == group_gid or group_gid in groups):
        access = Access.READ
    else:
        access = Access.NONE
    return Peer(pid=pid, uid=uid, gid=gid, groups=tuple(groups), access=access)


@dataclass
class _Conn:
    sock: socket.socket
    peer: Peer
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    last: float = field(default_factory=time.monotonic)
    waiting: bool = False  # a deferred reply is outstanding: read no further requests
    closing: bool = False  # close once outbuf is flushed
    eof: bool = False


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
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.group_gid = ensure_group(group)
        self.group = group
        self._sel = selectors.EpollSelector()
        self._conns: dict[int, _Conn] = {}
        self._done: queue.SimpleQueue[tuple[_Conn, Future[Any]]] = queue.SimpleQueue()
        self._again: dict[int, _Conn] = {}  # fd -> connection with requests left to answer
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sock = self._bind(mode)
        self._ino = os.stat(self.path, follow_symlinks=False).st_ino
        self._sel.register(self._sock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    # -- socket setup -------------------------------------------------------------------------

    def _bind(self, mode: int) -> socket.socket:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise CtlError(f"{self.path}: exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1)
                probe.connect(self.path)
                raise CtlError(f"{self.path}: another daemon is already listening there")
            except OSError:
                pass  # stale socket of a dead daemon: replaced below
            finally:
                probe.close()
        tmp = os.path.join(directory, f".ctl.{os.getpid()}.tmp")
        if len(os.fsencode(tmp)) >= 108 or len(os.fsencode(self.path)) >= 108:
            raise CtlError(f"{self.path}: too long for a Unix socket path (108 bytes, unix(7))")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            sock.bind(tmp)
            os.chmod(tmp, mode, follow_symlinks=True)  # just created by bind(2): not a symlink
            if os.geteuid() == 0 and self.group_gid is not None:
                os.chown(tmp, 0, self.group_gid, follow_symlinks=False)
            sock.listen(64)
            # rename(2) swaps the name atomically: clients never see a missing socket on restart.
            os.rename(tmp, self.path)
        except OSError as err:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CtlError(f"{self.path}: cannot create the ctl socket: {err.strerror}") from err
        return sock

    def fileno(self) -> int:
        """One fd for the daemon's selector: readable when :meth:`handle` has work."""
        return self._sel.fileno()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
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
                    conn = self._conns.get(key.fd)
                    if conn is None:
                        continue
                    if mask & selectors.EVENT_READ:
                        self._read(conn)
                    if mask & selectors.EVENT_WRITE and key.fd in self._conns:
                        self._flush(conn)
            except Exception:
                # A bug in one request must not take the daemon's control socket down.
                log.exception("ctl: unexpected error")
                conn = self._conns.get(key.fd)
                if conn is not None:
                    self._drop(conn)
        self._expire()

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
            if len(self._conns) >= self.max_clients:
                self._evict_idlest()
            conn = _Conn(sock, peer)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, "conn")
            if peer.access is Access.NONE:
                log.info(
                    "ctl: refused pid %d uid %d (not root, not in group %s)",
                    peer.pid,
                    peer.uid,
                    self.group,
                )
                self._reply(conn, error(Code.DENIED, self._denied_msg("use the ctl socket")))
                conn.closing = True
                self._flush(conn)

    def _denied_msg(self, what: str) -> str:
        return (
            f"permission denied: only root may {what}; "
            f"members of group '{self.group}' may only read"
        )

    def _evict_idlest(self) -> None:
        idle = [c for c in self._conns.values() if not c.waiting]
        if idle:
            self._drop(min(idle, key=lambda c: c.last))

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if not conn.waiting and now - conn.last > self.idle_timeout:
                self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        self._conns.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        if conn.closing and not conn.eof:
            # Discard: a refused or oversized peer gets its reply, nothing more is read. Up to
            # 1 MiB per call: the daemon calls handle() once per loop turn (50 ms when rules
            # are loaded), and 64 KiB a turn made a 16 MiB request occupy it for 13 s.
            try:
                for _ in range(16):
                    if not conn.sock.recv(1 << 16):
                        conn.eof = True
                        break
            except BlockingIOError:
                pass
            except OSError:
                self._drop(conn)
                return
            if conn.eof and not conn.outbuf:
                self._drop(conn)
            else:
                self._update_events(conn)
            return
        if conn.eof or len(conn.outbuf) > _OUTBUF_HIGH or b"\n" in conn.inbuf:
            # Back-pressure: answer what we have before reading more (see _OUTBUF_HIGH).
            self._update_events(conn)
            return
        try:
            data = conn.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        conn.last = time.monotonic()
        if not data:
            conn.eof = True
            if conn.inbuf.strip():
                conn.inbuf += b"\n"  # a last request without its newline
        conn.inbuf += data
        if conn.waiting and b"\n" not in conn.inbuf and len(conn.inbuf) > self.max_request:
            self._too_large(conn)  # a huge line sent while a slow request is outstanding
            return
        self._process(conn)
        self._settle(conn)

    def _settle(self, conn: _Conn) -> None:
        """After the peer's EOF: close once every request has been answered and sent."""
        if self._conns.get(conn.sock.fileno()) is not conn:
            return
        if conn.eof and not conn.waiting and b"\n" not in conn.inbuf:
            if not conn.outbuf:
                self._drop(conn)
                return
            conn.closing = True
        self._update_events(conn)

    def _defer(self, conn: _Conn) -> None:
        """Answer the rest of ``conn``'s requests in a later round (the wake pipe makes the
        daemon's selector call :meth:`handle` again at once)."""
        self._again[conn.sock.fileno()] = conn
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _process(self, conn: _Conn) -> None:
        budget = _BATCH
        while not conn.waiting and not conn.closing:
            if len(conn.outbuf) > _OUTBUF_HIGH:
                break  # resumed by _flush once the client has read its replies
            nl = conn.inbuf.find(b"\n")
            if nl < 0:
                if len(conn.inbuf) > self.max_request:
                    self._too_large(conn)
                break
            if nl > self.max_request:
                self._too_large(conn)
                break
            if budget == 0:
                self._defer(conn)  # fairness: the other clients' turn first
                break
            budget -= 1
            line = bytes(conn.inbuf[:nl])
            del conn.inbuf[: nl + 1]
            if not line.strip():
                continue
            self._request(conn, line)
        self._update_events(conn)

    def _too_large(self, conn: _Conn) -> None:
        conn.inbuf.clear()
        self._reply(
            conn, error(Code.TOO_LARGE, f"request larger than {self.max_request} bytes; refused")
        )
        conn.closing = True
        # The client's further sends now fail at once with EPIPE (net/unix/af_unix.c,
        # unix_stream_sendmsg: the peer's RCV_SHUTDOWN), instead of the daemon reading and
        # discarding the rest of a multi-MiB request; what is already queued is still drained
        # (closing with unread data would reset the connection before the reply is read).
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RD)
        self._flush(conn)

    def _request(self, conn: _Conn, line: bytes) -> None:
        try:
            cmd, args = parse_request(line)
            need = COMMANDS[cmd][0]
            if conn.peer.access < need:
                raise CtlError(self._denied_msg(f"run '{cmd}'"), Code.DENIED)
            result = self._dispatch(cmd, args, conn.peer)
        except NoSuchCore as err:
            self._reply(conn, error(Code.NOT_FOUND, str(err)))
            return
        except CtlError as err:
            self._reply(conn, error(err.code, str(err)))
            return
        except SnapdError as err:
            self._reply(conn, error(Code.FAILED, str(err)))
            return
        except Exception as err:
            log.exception("ctl: %s failed", line[:200])
            self._reply(conn, error(Code.INTERNAL, f"internal error: {type(err).__name__}: {err}"))
            return
        if isinstance(result, Future):
            conn.waiting = True
            result.add_done_callback(lambda fut: self._deferred_done(conn, fut))
        else:
            self._reply(conn, ok(result))

    def _dispatch(self, cmd: str, args: dict[str, Any], peer: Peer) -> Reply:
        h = self.handler
        if cmd in ("list-cores", "info", "rm"):
            if self.catalog is None:
                raise CtlError("this daemon has no catalog")
            if cmd == "list-cores":
                # Cores, by default; attempts that left none ("failed: why") with --all.
                entries = self.catalog.list(
                    rule=args.get("rule"),
                    pid=args.get("pid"),
                    since=args.get("since"),
                    include_failed=bool(args.get("all")),
                )
                return [e.to_dict(context=False) for e in entries]
            if cmd == "info":
                return self.catalog.get(args["id"]).to_dict()
            log.info("ctl: uid %d removes core %d", peer.uid, args["id"])
            return self.catalog.remove(args["id"]).to_dict(context=False)
        if cmd == "status":
            return h.status()
        if cmd == "rules":
            return h.rules()
        if cmd == "snap":
            return h.snap(args["pid"], args.get("content"), peer.uid)
        if cmd == "pause":
            return h.pause(args.get("reason", ""), peer.uid)
        if cmd == "resume":
            return h.resume(peer.uid)
        if cmd == "reload":
            return h.reload(peer.uid)
        raise CtlError(f"unknown command {cmd!r}", Code.BAD_REQUEST)  # pragma: no cover

    def _deferred_done(self, conn: _Conn, fut: Future[Any]) -> None:
        # Runs in whatever thread completed the future: hand over to the loop.
        self._done.put((conn, fut))
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        again, self._again = self._again, {}
        for fd, conn in again.items():
            if self._conns.get(fd) is conn:
                self._process(conn)
                self._settle(conn)
        while True:
            try:
                conn, fut = self._done.get_nowait()
            except queue.Empty:
                return
            conn.waiting = False
            if conn.sock.fileno() < 0 or self._conns.get(conn.sock.fileno()) is not conn:
                continue  # the client went away meanwhile
            err = fut.exception()
            if err is None:
                self._reply(conn, ok(fut.result()))
            elif isinstance(err, SnapdError):
                self._reply(conn, error(getattr(err, "code", Code.FAILED), str(err)))
            else:
                log.error("ctl: deferred request failed: %r", err)
                self._reply(
                    conn, error(Code.INTERNAL, f"internal error: {type(err).__name__}: {err}")
                )
            self._process(conn)
            self._settle(conn)

    def _reply(self, conn: _Conn, data: bytes) -> None:
        if len(conn.outbuf) + len(data) > _MAX_OUTBUF:
            self._drop(conn)  # a client that never reads gets dropped, not buffered forever
            return
        conn.outbuf += data
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.sock.fileno() not in self._conns:
            return
        while conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except BlockingIOError:
                break
            except OSError:
                self._drop(conn)
                return
            del conn.outbuf[:n]
            conn.last = time.monotonic()
        if (
            b"\n" in conn.inbuf
            and len(conn.outbuf) <= _OUTBUF_HIGH
            and not (conn.waiting or conn.closing)
        ):
            self._defer(conn)  # the client read its replies: answer the requests held back
        if not conn.outbuf and conn.closing and not conn.waiting:
            # Half-close so the client reads our reply and then EOF.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            if conn.eof:
                self._drop(conn)
                return
        self._update_events(conn)

    def _update_events(self, conn: _Conn) -> None:
        if self._conns.get(conn.sock.fileno()) is not conn:
            return
        # Read only what we are ready to answer (back-pressure, see _OUTBUF_HIGH); a closing
        # peer is read (and discarded) until its EOF.
        read = not conn.eof and (
            conn.closing or (len(conn.outbuf) <= _OUTBUF_HIGH and b"\n" not in conn.inbuf)
        )
        events = (selectors.EVENT_READ if read else 0) | (
            selectors.EVENT_WRITE if conn.outbuf else 0
        )
        try:
            key: selectors.SelectorKey | None = self._sel.get_key(conn.sock)
        except KeyError:
            key = None
        with contextlib.suppress(KeyError, ValueError, OSError):
            if not events:
                if key is not None:
                    self._sel.unregister(conn.sock)
            elif key is None:
                self._sel.register(conn.sock, events, "conn")
            elif key.events != events:
                self._sel.modify(conn.sock, events, "conn")
