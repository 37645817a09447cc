"""Randomness a failure can name, so that it can be replayed."""

from __future__ import annotations

import os
import random
import time


def seeded_rng(name: str) -> tuple[random.Random, int]:
    """A RNG seeded from SNAPD_TEST_SEED (or the clock), seed returned so failures can name it."""
    seed = int(os.environ.get("SNAPD_TEST_SEED", time.time_ns() % 1_000_000))
    return random.Random(f"{name}:{seed}"), seed
