"""Units in rule files: durations (``500ms``, ``10s``, ``5m``), sizes (``2GiB``), percentages."""

from __future__ import annotations

import re

DURATION_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
SIZE_BYTES = {
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
MAX_NS = (1 << 63) - 1

_DUR = re.compile(r"([0-9]+)([a-z]+)")
_SIZE = re.compile(r"([0-9]+)\s*([A-Za-z]+)")
_PCT = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")


class UnitError(ValueError):
    pass


def parse_duration(text: str) -> int:
    """``'500ms'`` -> 500_000_000 (ns). A unit is required; the value must be positive."""
    m = _DUR.fullmatch(text.strip())
    if not m or m.group(2) not in DURATION_NS:
        raise UnitError(
            f"bad duration {text!r}: use a number and a unit ({', '.join(DURATION_NS)}), e.g. 10s"
        )
    ns = int(m.group(1)) * DURATION_NS[m.group(2)]
    if ns <= 0:
        raise UnitError(f"bad duration {text!r}: must be more than zero")
    if ns > MAX_NS:
        raise UnitError(f"bad duration {text!r}: too long")
    return ns


def parse_size(text: str) -> int:
    """``'2GiB'`` -> 2147483648. A unit is required (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)."""
    m = _SIZE.fullmatch(text.strip())
    if not m or m.group(2) not in SIZE_BYTES:
        raise UnitError(f"bad size {text!r}: use a number and a unit ({', '.join(SIZE_BYTES)}), e.g. 2GiB")
    n = int(m.group(1)) * SIZE_BYTES[m.group(2)]
    if n <= 0:
        raise UnitError(f"bad size {text!r}: must be more than zero")
    if n > MAX_NS:
        raise UnitError(f"bad size {text!r}: too large")
    return n


def parse_percent(text: str) -> float:
    """``'90%'`` -> 90.0: share of one CPU, so a threaded process may exceed 100%."""
    m = _PCT.fullmatch(text.strip())
    if not m:
        raise UnitError(f"bad percentage {text!r}: write it like 90%")
    v = float(m.group(1))
    if not 0 < v <= 100_000:
        raise UnitError(f"bad percentage {text!r}: must be above 0%")
    return v
