"""Waiting for a condition with a deadline (never ``sleep(N)`` then assert)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: Every deadline of the suite is multiplied by this (e.g. 10 inside an emulated VM): a deadline
#: says when to give up, never how fast something must be, so a slow machine only needs a factor.
TIMEOUT_SCALE = float(os.environ.get("SNAPD_TEST_TIMEOUT_SCALE") or 1.0)
#: No condition is given up on sooner than this: on a shared, noisy CI machine with two CPUs a
#: process exiting or a daemon reacting can take seconds, and waiting longer costs a passing
#: test nothing.
MIN_WAIT_S = 30.0


def scaled(seconds: float) -> float:
    """A deadline or bound in seconds, scaled for this machine (see TIMEOUT_SCALE)."""
    return seconds * TIMEOUT_SCALE


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``cond`` until it returns a truthy value; fail with ``what`` after ``timeout``
    (at least MIN_WAIT_S, scaled by TIMEOUT_SCALE)."""
    timeout = scaled(max(timeout, MIN_WAIT_S))
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
