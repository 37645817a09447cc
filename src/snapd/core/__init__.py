"""The live-process ELF core writer. Imports neither bcc nor the rules.

from snapd.core import write_core
info = write_core(pid, "/var/tmp/core.1234", content="default-shm")
"""

from snapd.core.info import CoreInfo
from snapd.core.writer import write_core

__all__ = ["CoreInfo", "write_core"]
