"""Units in what people write to snapd: rule files, daemon options, retention settings.

One grammar per kind of quantity, for every stage (this module imports nothing of snapd):

Sizes (:func:`parse_size`): a number, integer or decimal, and a unit, case-sensitive
(``2Gb`` is refused: a lower-case ``b`` reads as bits):

- ``B``;
- ``K`` ``M`` ``G`` ``T``: powers of 1024, systemd's single letters (coredump.conf(5));
- ``KiB`` ``MiB`` ``GiB`` ``TiB``: powers of 1024 (IEC 80000-13);
- ``kB`` ``MB`` ``GB`` ``TB``: powers of 1000 (SI).

A bare number is a count of bytes only where the caller allows it (``bare=True``: daemon
options, retention settings); a rule file always names its unit. A percentage (``N%``) is
:func:`parse_percent`, used by the callers whose setting may be a share (the cpu trigger,
retention's ``MaxUse``/``KeepFree``).

Durations (:func:`parse_duration`): an integer and one of ``ns us ms s m h d``.
"""

from __future__ import annotations

import re
from decimal import Decimal

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
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
#: Every quantity must fit a signed 64-bit value (BPF maps, SQLite integers).
MAX_VALUE = (1 << 63) - 1
MAX_NS = MAX_VALUE
_MAX_DIGITS = 30  # more than any 64-bit value needs; keeps int() and Decimal cheap

_DUR = re.compile(r"([0-9]+)([a-z]+)")
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")
_PCT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*%")


class UnitError(ValueError):
    """``str()`` is one line naming the text and what it should look like."""


def parse_duration(text: str) -> int:
    """``'500ms'`` -> 500_000_000 (ns). A unit is required; the value must be positive."""
    m = _DUR.fullmatch(text.strip())
    if not m or m.group(2) not in DURATION_NS or len(m.group(1)) > _MAX_DIGITS:
        raise UnitError(
            f"bad duration {text!r}: use a number and a unit ({', '.join(DURATION_NS)}), e.g. 10s"
        )
    ns = int(m.group(1)) * DURATION_NS[m.group(2)]
    if ns <= 0:
        raise UnitError(f"bad duration {text!r}: must be more than zero")
    if ns > MAX_NS:
        raise UnitError(f"bad duration {text!r}: too long")
    return ns


def parse_size(text: str, *, bare: bool = False, minimum: int = 1) -> int:
    """``'2GiB'`` -> 2147483648 (see the module docstring for the units).

    ``bare``: a number without a unit is bytes. ``minimum``: the smallest value accepted."""
    m = _SIZE.fullmatch(text.strip())
    unit = m.group(2) if m else ""
    if not m or (unit not in SIZE_BYTES and not (bare and not unit)):
        what = "a number of bytes, or a number and a unit" if bare else "a number and a unit"
        raise UnitError(f"bad size {text!r}: use {what} ({', '.join(SIZE_BYTES)}), e.g. 2GiB")
    if len(m.group(1)) > _MAX_DIGITS:
        raise UnitError(f"bad size {text!r}: too large")
    n = int(Decimal(m.group(1)) * SIZE_BYTES.get(unit, 1))
    if n < minimum:
        need = "more than zero" if minimum == 1 else f"at least {minimum} bytes"
        raise UnitError(f"bad size {text!r}: must be {need}")
    if n > MAX_VALUE:
        raise UnitError(f"bad size {text!r}: too large")
    return n


def parse_percent(text: str, *, zero: bool = False, maximum: float = 100_000.0) -> float:
    """``'90%'`` -> 90.0. ``zero``: 0% is accepted; ``maximum``: the largest share (a cpu
    trigger's share is of one CPU, so a threaded process may exceed 100%)."""
    m = _PCT.fullmatch(text.strip())
    if not m or len(m.group(1)) > _MAX_DIGITS:
        raise UnitError(f"bad percentage {text!r}: write it like 90%")
    v = float(m.group(1))
    if v < 0 or (v == 0 and not zero):
        raise UnitError(f"bad percentage {text!r}: must be above 0%")
    if v > maximum:
        raise UnitError(f"bad percentage {text!r}: at most {maximum:g}%")
    return v
