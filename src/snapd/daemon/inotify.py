"""A minimal inotify(7) binding: one watch on the rules directory, events drained in a batch."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from enum import IntFlag

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


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


#: Every way a rule file can appear, change or go away (editors often write-and-rename).
RULE_EVENTS = (
    In.CLOSE_WRITE
    | In.ATTRIB
    | In.MOVED_FROM
    | In.MOVED_TO
    | In.CREATE
    | In.DELETE
    | In.DELETE_SELF
    | In.MOVE_SELF
)


class Watch:
    def __init__(self, directory: str) -> None:
        fd = _libc.inotify_init1(In.NONBLOCK | In.CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.fd = int(fd)
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory), int(RULE_EVENTS)) < 0:
            e = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(e, f"inotify_add_watch {directory}: {os.strerror(e)}", directory)

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
