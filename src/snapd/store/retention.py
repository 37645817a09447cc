"""Retention settings, after systemd-coredump's coredump.conf(5): MaxUse, KeepFree, age, per rule.

Defaults follow coredump.conf(5): ``MaxUse`` is 10% and ``KeepFree`` 15% of the size of the file
system holding the cores, each capped at 4 GiB. Cores are removed oldest first, and an entry that
is still being written (pending) is never removed: its size is not even known yet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from snapd.store.errors import StoreError
from snapd.units import UnitError, parse_percent, parse_size

GiB = 1 << 30
_DEFAULT_CAP = 4 * GiB

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*(sec|min|s|m|h|d|w)?(?![a-z])", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class ByteLimit:
    """A size in bytes, or a percentage of the file system holding the cores."""

    value: float
    percent: bool = False
    cap: int | None = None  # only for the built-in defaults, as in coredump.conf(5)

    def resolve(self, fs_size: int) -> int:
        n = int(fs_size * self.value / 100) if self.percent else int(self.value)
        return min(n, self.cap) if self.cap is not None else n

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))

    @classmethod
    def parse(cls, text: str | int) -> ByteLimit:
        """``"4G"``, ``"500MiB"``, ``"1048576"``, ``"10%"`` (of the file system) -> ByteLimit,
        in the grammar of :mod:`snapd.units` (a bare number is bytes)."""
        if isinstance(text, int):
            if text < 0:
                raise StoreError(f"size {text}: must not be negative")
            return cls(text)
        try:
            if text.strip().endswith("%"):
                return cls(parse_percent(text, zero=True, maximum=100), percent=True)
            return cls(parse_size(text, bare=True, minimum=0))
        except UnitError as err:
            raise StoreError(str(err)) from err


DEFAULT_MAX_USE = ByteLimit(10, percent=True, cap=_DEFAULT_CAP)
DEFAULT_KEEP_FREE = ByteLimit(15, percent=True, cap=_DEFAULT_CAP)


def parse_age(text: str | float) -> float:
    """``"7d"``, ``"12h"``, ``"1w 2d"``, ``"90"`` (seconds) -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    total = 0.0
    pos = 0
    s = text.strip()
    if not s:
        raise StoreError("age '': expected e.g. 7d, 12h, 30min or seconds")
    while pos < len(s):
        m = _AGE.match(s, pos)
        if not m or m.end() == pos:
            raise StoreError(f"age {text!r}: expected e.g. 7d, 12h, 30min or seconds")
        total += float(m.group(1)) * _AGE_UNITS[(m.group(2) or "").lower()]
        pos = m.end()
        while pos < len(s) and s[pos] == " ":
            pos += 1
    return total


@dataclass(frozen=True)
class RuleLimit:
    """Limits for the cores of one rule (on top of the global ones)."""

    max_cores: int | None = None
    max_use: int | None = None  # bytes


@dataclass(frozen=True)
class Retention:
    max_use: ByteLimit | None = DEFAULT_MAX_USE  # None: no limit
    keep_free: ByteLimit | None = DEFAULT_KEEP_FREE  # None: no limit
    max_age: float | None = None  # seconds; None: keep forever
    max_cores_per_rule: int | None = None  # default for every rule; None: no limit
    rules: Mapping[str, RuleLimit] = field(default_factory=dict)

    def rule_limit(self, rule: str) -> RuleLimit:
        lim = self.rules.get(rule)
        if lim is None:
            return RuleLimit(max_cores=self.max_cores_per_rule)
        if lim.max_cores is None and self.max_cores_per_rule is not None:
            return RuleLimit(max_cores=self.max_cores_per_rule, max_use=lim.max_use)
        return lim

    @classmethod
    def from_mapping(cls, conf: Mapping[str, object]) -> Retention:
        """Build from coredump.conf-style keys: ``MaxUse``, ``KeepFree``, ``MaxAge``,
        ``MaxCoresPerRule`` and ``Rules: {name: {MaxCores, MaxUse}}``. An empty string or
        ``infinity`` disables a limit."""
        known = {"MaxUse", "KeepFree", "MaxAge", "MaxCoresPerRule", "Rules"}
        unknown = sorted(set(conf) - known)
        if unknown:
            raise StoreError(
                f"retention: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )

        def off(v: object) -> bool:
            return v is None or (isinstance(v, str) and v.strip().lower() in ("", "infinity"))

        def size(key: str, default: ByteLimit | None) -> ByteLimit | None:
            if key not in conf:
                return default
            v = conf[key]
            if off(v):
                return None
            if not isinstance(v, (str, int)):
                raise StoreError(f"retention: {key} must be a size such as 4G or 10%")
            return ByteLimit.parse(v)

        def count(v: object, key: str) -> int | None:
            if off(v):
                return None
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise StoreError(f"retention: {key} must be a non-negative integer")
            return v

        age_v = conf.get("MaxAge")
        if off(age_v):
            max_age = None
        elif isinstance(age_v, (str, int, float)) and not isinstance(age_v, bool):
            max_age = parse_age(age_v)
        else:
            raise StoreError("retention: MaxAge must be an age such as 7d or 12h")
        rules: dict[str, RuleLimit] = {}
        raw_rules = conf.get("Rules") or {}
        if not isinstance(raw_rules, Mapping):
            raise StoreError("retention: Rules must map rule names to {MaxCores, MaxUse}")
        for name, lim in raw_rules.items():
            if not isinstance(lim, Mapping):
                raise StoreError(f"retention: Rules.{name} must be a mapping")
            rules[str(name)] = RuleLimit(
                max_cores=count(lim.get("MaxCores"), f"Rules.{name}.MaxCores"),
                max_use=_rule_bytes(lim.get("MaxUse"), str(name)),
            )
        return cls(
            max_use=size("MaxUse", DEFAULT_MAX_USE),
            keep_free=size("KeepFree", DEFAULT_KEEP_FREE),
            max_age=max_age,
            max_cores_per_rule=count(conf.get("MaxCoresPerRule"), "MaxCoresPerRule"),
            rules=rules,
        )


def _rule_bytes(v: object, name: str) -> int | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "infinity")):
        return None
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise StoreError(f"retention: Rules.{name}.MaxUse must be a size such as 1G")
    lim = ByteLimit.parse(v)
    if lim.percent:
        raise StoreError(
            f"retention: Rules.{name}.MaxUse must be a size in bytes (e.g. 1G), not a percentage"
        )
    return lim.resolve(0)
