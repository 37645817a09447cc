"""Typed errors of the ship stage (bundles, compressed cores, uploads): one actionable line each."""

from __future__ import annotations

from snapd.errors import SnapdError


class ShipError(SnapdError):
    """A bundle, compressed core, ELF cache or upload cannot be used as asked."""


class BundleError(ShipError):
    """A bundle or compressed core is unreadable, hostile or cannot be written."""

    def __init__(self, path: str, msg: str) -> None:
        super().__init__(f"{path}: {msg}")
        self.path = path


class ExeMismatch(BundleError):
    """``--exe`` names a file that is not the executable the core ran (build-ids differ)."""

    def __init__(self, path: str, found: str, wanted: str) -> None:
        super().__init__(
            path, f"build-id {found} is not the core's executable ({wanted}); pass the binary that ran"
        )
        self.found = found
        self.wanted = wanted


class CacheError(ShipError):
    def __init__(self, path: str, msg: str) -> None:
        super().__init__(f"{path}: {msg}")
        self.path = path


class ConfigError(ShipError):
    """A ship configuration file is wrong: ``file:line:col: what``."""

    def __init__(self, path: str, msg: str, line: int = 0, col: int = 0) -> None:
        where = f"{path}:{line}:{col}" if line else path
        super().__init__(f"{where}: {msg}")
        self.path = path
        self.line = line
        self.col = col


class StoreUnavailable(ShipError):
    """The object store refused or could not be reached; ``retryable`` says whether to try later."""

    def __init__(self, what: str, msg: str, *, code: str = "", retryable: bool = True) -> None:
        super().__init__(f"{what}: {msg}")
        self.what = what
        self.code = code
        self.retryable = retryable
