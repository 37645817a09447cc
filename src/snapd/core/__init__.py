"""The live-process ELF core writer. Imports neither bcc nor the rules.

from snapd.core import write_core
info = write_core(pid, "/var/tmp/core.1234", content="default-shm")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snapd.core.info import CoreInfo
    from snapd.core.writer import write_core

__all__ = ["CoreInfo", "write_core"]


def __getattr__(name: str) -> Any:
    # PEP 562: the writer (ptrace, libc bindings, the fork snapshot) loads on first use, so that
    # readers of cores (snapd inspect, snapd diff) importing snapd.core.elf do not pay for it.
    if name == "CoreInfo":
        from snapd.core.info import CoreInfo

        return CoreInfo
    if name == "write_core":
        from snapd.core.writer import write_core

        return write_core
    raise AttributeError(f"module 'snapd.core' has no attribute {name!r}")
