"""Retention like systemd-coredump: MaxUse, KeepFree, age, per rule; oldest first; never pending."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.store import ByteLimit, Catalog, Entry, Retention, RuleLimit, StoreError, parse_age

DATA = b"\x7fELF" + os.urandom(64 * 1024)


@pytest.fixture
def make(tmp_path: Path) -> Callable[[Retention], Catalog]:
    opened: list[Catalog] = []

    def go(ret: Retention) -> Catalog:
        c = Catalog(tmp_path / "retention-state", ret)
        opened.append(c)
        return c

    yield go  # type: ignore[misc]
    for c in opened:
        c.close()


def test_max_use_removes_oldest_never_pending(
    make: Callable[[Retention], Catalog], take: Callable[..., Entry]
) -> None:
    probe = make(Retention(max_use=None, keep_free=None))
    size = take(data=DATA, cat=probe).disk_bytes
    probe.remove(probe.list()[0].id)
    probe.close()
    cat = make(Retention(max_use=ByteLimit(3 * size), keep_free=None))
    writing = cat.reserve(rule="r", pid=9, now=1.0)  # the oldest entry, still being written
    taken = [take(data=DATA, cat=cat, now=100.0 + i) for i in range(6)]
    left = [e.id for e in cat.list()]
    assert left == [e.id for e in taken[-3:]], "the newest three fit in MaxUse"
    for e in taken[:3]:
        assert not os.path.exists(e.path)
    for e in taken[-3:]:
        assert os.path.exists(e.path)
    assert cat.get(writing.id).pending, "a core being written is never removed"
    assert cat.usage() <= 3 * size


def test_new_core_spared_even_if_alone_too_big(
    make: Callable[[Retention], Catalog], take: Callable[..., Entry]
) -> None:
    cat = make(Retention(max_use=ByteLimit(1), keep_free=None))
    a = take(data=DATA, cat=cat, now=1.0)
    b = take(data=DATA, cat=cat, now=2.0)
    assert [e.id for e in cat.list()] == [b.id], "like coredump_vacuum(): the file just written is excluded"
    assert not os.path.exists(a.path)
    assert cat.vacuum() and cat.list() == []


def test_keep_free(make: Callable[[Retention], Catalog], take: Callable[..., Entry]) -> None:
    cat = make(Retention(max_use=None, keep_free=ByteLimit(100, percent=True)))
    a = take(data=DATA, cat=cat, now=1.0)
    b = take(data=DATA, cat=cat, now=2.0)
    assert [e.id for e in cat.list()] == [b.id]
    assert not os.path.exists(a.path)


def test_max_age(make: Callable[[Retention], Catalog], take: Callable[..., Entry]) -> None:
    cat = make(Retention(max_use=None, keep_free=None, max_age=3600))
    now = time.time()
    old = take(cat=cat, now=now - 3000)
    new = take(cat=cat, now=now)
    assert [e.id for e in cat.list()] == [old.id, new.id]
    removed = cat.vacuum(now=now + 1800)
    assert [e.id for e in removed] == [old.id]
    assert [e.id for e in cat.list()] == [new.id]
    assert not os.path.exists(old.path)


def test_per_rule_limits(make: Callable[[Retention], Catalog], take: Callable[..., Entry]) -> None:
    ret = Retention(
        max_use=None,
        keep_free=None,
        max_cores_per_rule=3,
        rules={"noisy": RuleLimit(max_cores=1), "big": RuleLimit(max_use=1)},
    )
    cat = make(ret)
    for i in range(5):
        take(rule="noisy", cat=cat, now=float(i))
        take(rule="other", cat=cat, now=float(i))
        take(rule="big", cat=cat, data=DATA, now=float(i))
    by_rule: dict[str, int] = {}
    for e in cat.list():
        by_rule[e.rule] = by_rule.get(e.rule, 0) + 1
    assert by_rule == {"noisy": 1, "other": 3, "big": 1}
    assert [e.created for e in cat.list(rule="other")] == [2.0, 3.0, 4.0], "oldest go first"


def test_failed_rows_expire_with_age(make: Callable[[Retention], Catalog]) -> None:
    cat = make(Retention(max_use=None, keep_free=None, max_age=10))
    e = cat.reserve(rule="r", pid=1, now=1.0)
    cat.fail(e.id, "boom")
    assert [x.id for x in cat.vacuum(now=100.0)] == [e.id]


def test_default_limits_are_systemd_like() -> None:
    r = Retention()
    assert r.max_use is not None and r.keep_free is not None
    assert r.max_use.resolve(100 << 30) == 4 << 30  # 10% of 100G capped at 4G
    assert r.max_use.resolve(10 << 30) == 1 << 30
    assert r.keep_free.resolve(10 << 30) == int((10 << 30) * 0.15)


def test_parse_config() -> None:
    assert ByteLimit.parse("4G").resolve(0) == 4 << 30
    assert ByteLimit.parse("500MiB").resolve(0) == 500 << 20
    assert ByteLimit.parse("10%").resolve(1000) == 100
    assert parse_age("1w 2d") == 9 * 86400
    assert parse_age("30min") == 1800
    r = Retention.from_mapping(
        {
            "MaxUse": "2G",
            "KeepFree": "infinity",
            "MaxAge": "7d",
            "MaxCoresPerRule": 5,
            "Rules": {"oom": {"MaxCores": 2, "MaxUse": "1G"}},
        }
    )
    assert r.max_use == ByteLimit(2 << 30) and r.keep_free is None and r.max_age == 7 * 86400
    assert r.rule_limit("oom") == RuleLimit(max_cores=2, max_use=1 << 30)
    assert r.rule_limit("x") == RuleLimit(max_cores=5)
    for bad in (
        {"MaxUse": "lots"},
        {"Bogus": 1},
        {"MaxAge": "soon"},
        {"Rules": {"x": {"MaxUse": "5%"}}},
        {"MaxCoresPerRule": -1},
    ):
        with pytest.raises(StoreError):
            Retention.from_mapping(bad)
