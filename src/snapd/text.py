"""Showing text that someone else chose: a target's comm, argv and file names, a rule file's
name and contents.

A process names itself (prctl(PR_SET_NAME), argv[0], the files it maps) and anyone may write a
rule file that `snapd check` is then run on, so any of these may hold ESC [ 2 J, a newline that
forges a log line, a right-to-left override or bytes that are not UTF-8. Everything snapd prints
or logs of them goes through :func:`safe`, the one escaper.
"""

from __future__ import annotations

import logging

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe(value: object) -> str:
    """Printable, single-line, unambiguous text: a backslash is doubled; newline, carriage
    return and tab become ``\\n`` ``\\r`` ``\\t``; every other character ``str.isprintable``
    refuses (C0 and C1 controls, DEL, format characters such as bidi overrides and zero-width
    spaces, lone surrogates left by undecodable bytes, separators other than space) becomes
    ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. So the output can neither drive a terminal nor
    forge a line, and two different inputs never print the same."""
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
