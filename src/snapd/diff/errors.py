"""What can stop a diff: a file that is not a usable core, or two cores of different processes."""

from __future__ import annotations

from snapd.errors import SnapdError
from snapd.text import safe


class DiffError(SnapdError):
    """Base of the diff's errors; ``str()`` is one line."""


class BadCore(DiffError):
    """``path`` cannot be diffed: not an ELF core, truncated headers, malformed notes, unreadable."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{safe(path)}: {why}")
        self.path = path
        self.why = why


class DifferentProcesses(DiffError):
    """Two snapshots that are not of one process (a pid, a start time or an executable differ).

    ``a`` and ``b`` name them: core paths, or catalog ids."""

    def __init__(self, a: str, b: str, why: str, hint: str = "diff two cores of the same process") -> None:
        super().__init__(f"{safe(a)} and {safe(b)} are of different processes ({safe(why)}); {hint}")
        self.a = a
        self.b = b
        self.why = why
