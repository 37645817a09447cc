"""Typed errors of the store: each ``str()`` is one actionable line."""

from __future__ import annotations

from snapd.errors import SnapdError


class StoreError(SnapdError):
    """The catalog or its cores directory cannot be used as asked."""


class UnsafePath(StoreError):
    """A path in the store is a symlink, not ours, or otherwise not what the store created."""

    def __init__(self, path: str, msg: str) -> None:
        super().__init__(f"{path}: {msg}")
        self.path = path


class NoSuchCore(StoreError):
    def __init__(self, core_id: int) -> None:
        super().__init__(f"no core with id {core_id}; see 'snapd ctl list-cores'")
        self.core_id = core_id


class CoreBusy(StoreError):
    """The entry is still pending: its core is being written right now."""

    def __init__(self, core_id: int, what: str) -> None:
        super().__init__(f"core {core_id} is still being written; cannot {what} it yet")
        self.core_id = core_id
