"""Who is on the other end of a ctl connection, and what they may do.

Decided once per connection from the kernel's view of the peer (SO_PEERCRED and SO_PEERGROUPS,
socket(7)), never from anything the client says: uid 0 may do everything; members of the
``snapd`` group may read (list-cores, info, status, rules); everyone else is refused. The
daemon's own uid counts as root: it could ptrace the daemon anyway.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import struct
import subprocess
from dataclasses import dataclass

from snapd.ctl.protocol import DEFAULT_GROUP, Access

log = logging.getLogger("snapd.ctl")

# include/uapi/asm-generic/socket.h; Python's socket module lacks SO_PEERGROUPS (Linux 4.13).
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


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
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
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
