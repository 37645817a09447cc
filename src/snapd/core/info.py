"""What a finished dump reports: the record the daemon puts in the catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CoreInfo:
    pid: int
    path: str  # final path of the published core
    comm: str
    exe: str
    threads: int
    mappings: int  # PT_LOAD segments
    dumped_mappings: int  # PT_LOAD segments with p_filesz > 0
    apparent_size: int  # file length in bytes
    disk_bytes: int  # bytes allocated on disk (st_blocks * 512): sparse cores are small
    memory_bytes: int  # bytes of target memory copied into the file
    content: str  # the content spec, as parsed
    snapshot: str  # a SnapshotMode value: "frozen" or "fork"
    started: float  # unix time at which the target was halted
    freeze_seconds: float  # how long the target's threads were halted
    elapsed_seconds: float  # whole dump, from halting to the published file
    fallback: str = ""  # why a fork snapshot fell back to frozen mode, if it did

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
