"""What a bounded run may use: one record, sent to the child as JSON."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

#: where shared objects, debug files and the interpreter live on Debian, Ubuntu, Fedora
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/opt", "/etc/ld.so.cache")


def code_paths() -> list[str]:
    """The interpreter and snapd's own code, which a job may still import lazily: paths to add
    to ``read_paths``."""
    import snapd

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(snapd.__file__))}
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    return sorted(p for p in paths if os.path.exists(p))


@dataclass(frozen=True)
class Limits:
    #: wall-clock seconds from the start; then the whole process group is SIGKILLed
    deadline: float = 30.0
    #: RLIMIT_CPU (SIGXCPU at this, SIGKILL a second later)
    cpu_seconds: int = 30
    #: RLIMIT_AS, bytes of address space
    address_space: int = 4 << 30
    #: RLIMIT_FSIZE: the largest file (memfds included) the child may write; 0: none
    file_size: int = 0
    #: RLIMIT_NOFILE
    open_files: int = 1024
    #: the result (JSON) may be at most this long; a longer one is a failure
    output_bytes: int = 16 << 20
    #: how much of the child's stdout/stderr is kept to explain a failure (the tail)
    log_bytes: int = 8192
    #: nice value (setpriority) and the idle I/O class (ioprio_set), so it yields to everything
    nice: int = 19
    idle_io: bool = True
    #: started as root: the user to become (its group, no supplementary groups)
    user: str = "nobody"
    #: keep CAP_DAC_READ_SEARCH after becoming ``user``, so a library that reopens a 0600 file
    #: by path (/proc/self/fd/N) can; granted only when Landlock confines what it may read
    keep_read_cap: bool = False
    #: Landlock: paths (trees or files) that may be read; everything else by path is refused
    read_paths: tuple[str, ...] = SYSTEM_READ
    #: Landlock: trees that may also be written (e.g. a debuginfod cache)
    write_paths: tuple[str, ...] = ()
    #: allow TCP (debuginfod); otherwise refused where Landlock handles the network (ABI 4)
    network: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Limits:
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    def but(self, **kw: Any) -> Limits:
        return replace(self, **kw)
