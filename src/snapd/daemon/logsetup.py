"""The daemon's log lines: one escaped line each (:class:`snapd.text.SafeFormatter`), with an
ISO 8601 time unless journald is the reader, which stamps every line itself.

systemd sets ``$JOURNAL_STREAM`` to the ``DEVICE:INODE`` of the stream it connected to stderr
(systemd.exec(5)); it is journald only if stderr is still that file (a shell that redirects it
keeps the variable).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from typing import TextIO

from snapd.text import SafeFormatter


def journald_reads(stream: TextIO) -> bool:
    want = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = want.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class TimedFormatter(SafeFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = dt.datetime.fromtimestamp(record.created).astimezone()
        return t.isoformat(timespec="milliseconds")


def configure(stream: TextIO = sys.stderr, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(stream)
    if journald_reads(stream):
        handler.setFormatter(SafeFormatter("%(levelname)s: %(message)s"))
    else:
        handler.setFormatter(TimedFormatter("%(asctime)s %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
