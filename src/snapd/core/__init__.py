"""The live-process ELF core writer. Imports neither bcc nor the rules.

from snapd.core import write_core
info = write_core(pid, "/var/tmp/core.1234", content="default-shm")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snapd.core.info import CoreInfo
    from snapd.core.writer import PARTIAL_PREFIX, SNAPSHOT_MODES, write_core

__all__ = ["PARTIAL_PREFIX", "SNAPSHOT_MODES", "CoreInfo", "write_core"]


def __getattr__(name: str) -> Any:
    # PEP 562: the writer (ptrace, libc bindings, the fork snapshot) loads on first use, so that
    # readers of cores (snapd inspect, snapd diff) importing snapd.core.elf do not pay for it.
    if name == "CoreInfo":
        from snapd.core.info import CoreInfo

        return CoreInfo
    if name in __all__:
        from snapd.core import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'snapd.core' has no attribute {name!r}")
