"""Showing text that a target chose: its comm, argv, file names.

A process names itself (prctl(PR_SET_NAME), argv[0], the files it maps), so any of these may hold
ESC [ 2 J, a newline that forges a log line, or a right-to-left override. Everything snapd prints
or logs of them goes through :func:`safe`.
"""

from __future__ import annotations

import logging

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe(value: object) -> str:
    """Printable, single-line text: control characters, newlines, escapes and invisible
    formatting characters become backslash escapes; a backslash is doubled."""
    out = []
    for ch in str(value):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


class SafeFormatter(logging.Formatter):
    """Log records as one escaped line each: a log line says what snapd saw, and can neither
    drive the operator's terminal nor pose as another record (tracebacks keep their lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return safe(super().formatMessage(record))
