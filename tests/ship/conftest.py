"""Fixtures of the ship tests: the credentials file and upload config that point at a SeaweedFS
server (the ``weed`` and ``fresh_weed`` fixtures of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from support.weed import BUCKET, KEY, SECRET, Weed, write_credentials


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that starts a real SeaweedFS takes seconds: it is `slow` (out of the fast lane)."""
    for item in items:
        if {"weed", "fresh_weed"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
