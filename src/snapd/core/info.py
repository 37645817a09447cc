"""What a finished dump reports: the record the daemon puts in the catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CopyReport:
    """How the memory was copied out, and the measurements that chose how."""

    method: str  # direct | buffered | direct+buffered | mmap (snapd.core.strategy.Method)
    why: str
    rates: dict[str, float] = field(default_factory=dict)  # bytes/s per candidate (calibration)
    calibration: str = ""  # measured | cache | memory | none, with its age
    staging_bytes: int = 0  # at most, beyond the warm chunks
    staging_head: int = 0  # of which faulted in before the halt
    head_seconds: float = 0.0  # and how long that took (at most strategy.HEAD_SECONDS)
    staging_used: int = 0  # faulted in, in the end (peak extra memory)
    budget_bytes: int = 0
    estimate_bytes: int = 0
    predicted_rate: float = 0.0  # bytes/s the writers were expected to drain at
    observed_rate: float = 0.0  # bytes/s they did (0: not measured)
    read_seconds: float = 0.0  # reading target memory (halted, in frozen mode)
    waited_seconds: float = 0.0  # of which waiting for the writers (staging exhausted)
    beside_rate: float = 0.0  # bytes/s the writers drained beside the reader, until it waited
    drain_seconds: float = 0.0  # writing after the target was resumed
    written: dict[str, int] = field(default_factory=dict)  # bytes per sink
    stale: str = ""  # a drift that made the calibration stale


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
    copy: CopyReport | None = None
    # argv as read while the target was halted (NT_PRPSINFO's pr_psargs is its first 80 bytes):
    # the command line of the moment the core shows, which a process may rewrite at any time
    # (setproctitle: postgres, nginx, sshd)
    cmdline: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
