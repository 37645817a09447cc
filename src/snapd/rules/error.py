"""RuleError: one problem in one rule file, at a line and column."""

from __future__ import annotations

from snapd.errors import SnapdError
from snapd.text import safe


class RuleError(SnapdError):
    """``str()`` is ``path:line:col: msg`` (line and column count from 1), one printable line:
    it quotes what the file says, and `snapd check` may be run on a file someone else wrote."""

    def __init__(self, path: str, line: int, col: int, msg: str) -> None:
        super().__init__(f"{safe(path)}:{line}:{col}: {safe(msg)}")
        self.path = path
        self.line = line
        self.col = col
        self.msg = msg

    def __reduce__(self) -> tuple[type[RuleError], tuple[str, int, int, str]]:
        return (RuleError, (self.path, self.line, self.col, self.msg))
