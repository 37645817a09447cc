"""Rule files: strict YAML loading into typed, frozen rules (see docs/rules.md).

``load_file``/``check_file``/``load_dir`` never raise anything but :class:`RuleError` for bad
input; the `when` language lives in :mod:`snapd.rules.expr`.
"""

from __future__ import annotations

from snapd.content import SnapshotMode
from snapd.rules.error import RuleError
from snapd.rules.loader import MAX_FILE_BYTES, check_file, load_dir, load_file, parse_rule
from snapd.rules.model import (
    Action,
    ActiveWindow,
    CoreAction,
    CpuTrigger,
    EveryTrigger,
    FdsTrigger,
    Kind,
    Limits,
    RssTrigger,
    Rule,
    StopMode,
    SyscallTrigger,
    Target,
    ThreadsTrigger,
    Trigger,
    trigger_kind,
)

__all__ = [
    "MAX_FILE_BYTES",
    "Action",
    "ActiveWindow",
    "CoreAction",
    "CpuTrigger",
    "EveryTrigger",
    "FdsTrigger",
    "Kind",
    "Limits",
    "RssTrigger",
    "Rule",
    "RuleError",
    "SnapshotMode",
    "StopMode",
    "SyscallTrigger",
    "Target",
    "ThreadsTrigger",
    "Trigger",
    "check_file",
    "load_dir",
    "load_file",
    "parse_rule",
    "trigger_kind",
]
