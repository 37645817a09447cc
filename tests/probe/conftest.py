"""Fixtures of the probe tests: a Probes of the test's own, closed at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from snapd.probe import Probes


@pytest.fixture
def probes() -> Iterator[Probes]:
    p = Probes(sample_interval_s=0.1)
    yield p
    p.close()
