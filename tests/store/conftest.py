"""Store fixtures: a catalog in a temp state dir, and a writer that publishes like snapd.core.

``write_like_core_writer`` follows the core writer's documented contract (a ``.snapd-partial.*``
temp file created O_EXCL|O_NOFOLLOW 0600 in the same directory, linked into place without
replacing anything, then unlinked) so that the store is tested against real files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapd.core.info import CoreInfo
from snapd.store import Catalog, Entry, Retention
from support.standin import write_like_core_writer


@pytest.fixture
def core_writer() -> Callable[..., CoreInfo]:
    return write_like_core_writer


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def catalog(state_dir: Path) -> Iterator[Catalog]:
    cat = Catalog(state_dir, Retention(max_use=None, keep_free=None))
    yield cat
    cat.close()


@pytest.fixture
def take(catalog: Catalog) -> Callable[..., Entry]:
    """take(rule=..., pid=..., data=..., **reserve_kw) -> the published Entry."""

    def go(
        rule: str = "r", pid: int = 100, data: bytes | None = None, cat: Catalog | None = None, **kw: object
    ) -> Entry:
        c = cat or catalog
        kw.setdefault("comm", "victim")
        kw.setdefault("trigger", {"syscall": "openat", "ret": -13})
        e = c.reserve(rule=rule, pid=pid, **kw)  # type: ignore[arg-type]
        info = write_like_core_writer(e.path, data if data is not None else b"\x7fELF" + b"\0" * 4092, pid)
        return c.publish(e.id, info)

    return go
