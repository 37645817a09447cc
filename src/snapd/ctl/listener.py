"""The ctl socket file: bound beside its final name and renamed into place, 0660 root:snapd.

rename(2) swaps the name atomically, so a client never sees a missing socket across a restart;
a stale socket of a dead daemon is replaced, a live daemon's or anything that is not a socket
is refused.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from snapd.ctl.protocol import CtlError

UNIX_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), unix(7)


def bind_socket(path: str, mode: int, group_gid: int | None) -> socket.socket:
    """A non-blocking listening socket at ``path`` (absolute)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise CtlError(f"{path}: exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1)
            probe.connect(path)
            raise CtlError(f"{path}: another daemon is already listening there")
        except OSError:
            pass  # stale socket of a dead daemon: replaced below
        finally:
            probe.close()
    tmp = os.path.join(directory, f".ctl.{os.getpid()}.tmp")
    if len(os.fsencode(tmp)) >= UNIX_PATH_MAX or len(os.fsencode(path)) >= UNIX_PATH_MAX:
        raise CtlError(f"{path}: too long for a Unix socket path (108 bytes, unix(7))")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.bind(tmp)
        os.chmod(tmp, mode, follow_symlinks=True)  # just created by bind(2): not a symlink
        if os.geteuid() == 0 and group_gid is not None:
            os.chown(tmp, 0, group_gid, follow_symlinks=False)
        sock.listen(64)
        os.rename(tmp, path)
    except OSError as err:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CtlError(f"{path}: cannot create the ctl socket: {err.strerror}") from err
    return sock
