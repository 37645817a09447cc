"""The exception tree shared by every stage.

Every error a user can cause or meet is a :class:`SnapdError` whose ``str()`` is one actionable
line; the CLI prints it and exits non-zero (the traceback only with ``SNAPD_DEBUG=1``).
``OSError`` is converted at the /proc, ptrace and file boundaries with ``raise ... from err`` so
that ``errno`` stays reachable through ``__cause__``.
"""

from __future__ import annotations

import errno as _errno


class SnapdError(Exception):
    """Base class: ``str(err)`` is a complete one-line message."""


class TargetError(SnapdError):
    """Something about the target process prevents the operation."""

    def __init__(self, pid: int, msg: str) -> None:
        super().__init__(f"pid {pid}: {msg}")
        self.pid = pid


class TargetGone(TargetError):
    def __init__(self, pid: int, during: str = "") -> None:
        where = f" during {during}" if during else ""
        super().__init__(pid, f"no such process (it exited{where})" if during else "no such process")


class KernelThread(TargetError):
    def __init__(self, pid: int, comm: str) -> None:
        super().__init__(pid, f"'{comm}' is a kernel thread; it has no user memory to dump")


class Zombie(TargetError):
    def __init__(self, pid: int, comm: str) -> None:
        super().__init__(pid, f"'{comm}' is a zombie (exited, not yet reaped); nothing to dump")


class AlreadyTraced(TargetError):
    def __init__(self, pid: int, tracer_pid: int, tracer_comm: str) -> None:
        super().__init__(
            pid,
            f"already traced by pid {tracer_pid} ({tracer_comm}); detach it (e.g. quit gdb) and retry",
        )
        self.tracer_pid = tracer_pid
        self.tracer_comm = tracer_comm


class NotPermitted(TargetError):
    def __init__(self, pid: int, what: str = "trace") -> None:
        super().__init__(
            pid,
            f"not permitted to {what} it: run as root or with CAP_SYS_PTRACE "
            "(and check kernel.yama.ptrace_scope)",
        )


class OutputError(SnapdError):
    """The core file could not be created or written."""

    def __init__(self, path: str, err: OSError) -> None:
        self.path = path
        self.errno = err.errno
        hint = {
            _errno.ENOENT: "the directory does not exist",
            _errno.EACCES: "permission denied",
            _errno.EPERM: "permission denied",
            _errno.EROFS: "read-only file system",
            _errno.ENOSPC: "no space left on device; free some space or choose another directory",
            _errno.EDQUOT: "disk quota exceeded",
            _errno.ENOTDIR: "a path component is not a directory",
        }.get(err.errno or 0, err.strerror or str(err))
        super().__init__(f"{path}: cannot write core: {hint}")


class ContentError(SnapdError):
    """A content specification (``-c``) could not be parsed."""

    def __init__(self, spec: str, msg: str) -> None:
        super().__init__(f"content '{spec}': {msg}")
        self.spec = spec


class SnapshotError(SnapdError):
    """A snapshot mode could not be used."""
