"""RuleError: one problem in one rule file, at a line and column."""

from __future__ import annotations

import unicodedata

from snapd.errors import SnapdError


def printable(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1), invisible format characters (bidi
    overrides, zero-width spaces) and lone surrogates (undecodable bytes of a file name) written
    as backslash escapes: a rule error quotes what the file says, and `snapd check` may be run
    on a file someone else wrote, so it must not drive the terminal (ESC [ 2 J) or forge lines.
    """
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


class RuleError(SnapdError):
    """``str()`` is ``path:line:col: msg`` (line and column count from 1), one printable line."""

    def __init__(self, path: str, line: int, col: int, msg: str) -> None:
        super().__init__(f"{printable(path)}:{line}:{col}: {printable(msg)}")
        self.path = path
        self.line = line
        self.col = col
        self.msg = msg

    def __reduce__(self) -> tuple[type[RuleError], tuple[str, int, int, str]]:
        return (RuleError, (self.path, self.line, self.col, self.msg))
