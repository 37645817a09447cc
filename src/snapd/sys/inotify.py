"""A minimal inotify(7) binding: one watch on a directory, events drained in a batch."""

from __future__ import annotations

import os
import struct
from enum import IntFlag

from snapd.sys.libc import LIBC, last_error


class In(IntFlag):
    """include/uapi/linux/inotify.h"""

    MODIFY = 0x002
    ATTRIB = 0x004
    CLOSE_WRITE = 0x008
    MOVED_FROM = 0x040
    MOVED_TO = 0x080
    CREATE = 0x100
    DELETE = 0x200
    DELETE_SELF = 0x400
    MOVE_SELF = 0x800
    NONBLOCK = 0o4000
    CLOEXEC = 0o2000000


class Watch:
    """inotify_init1 + one inotify_add_watch on ``directory`` for the events in ``mask``."""

    def __init__(self, directory: str, mask: int) -> None:
        fd = LIBC.inotify_init1(In.NONBLOCK | In.CLOEXEC)
        if fd < 0:
            raise last_error("inotify_init1")
        self.fd = int(fd)
        if LIBC.inotify_add_watch(self.fd, os.fsencode(directory), int(mask)) < 0:
            err = last_error(f"inotify_add_watch {directory}", directory)
            os.close(self.fd)
            raise err

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> list[str]:
        """Names touched since the last call (may be empty)."""
        names: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            off = 0
            while off + 16 <= len(data):
                _wd, _mask, _cookie, n = struct.unpack_from("iIII", data, off)
                names.append(data[off + 16 : off + 16 + n].rstrip(b"\0").decode("utf-8", "replace"))
                off += 16 + n

    def close(self) -> None:
        os.close(self.fd)
