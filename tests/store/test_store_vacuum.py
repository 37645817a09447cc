"""Retention's decision alone (snapd.store.vacuum.plan): entries, limits and file-system numbers
in, entries to delete out. No disk, no root; like systemd's test-coredump-vacuum."""

from __future__ import annotations

from snapd.store import ByteLimit, Entry, Retention, RuleLimit
from snapd.store.vacuum import MAX_FAILED_ROWS, Space, plan

MiB = 1 << 20
ROOMY = Space(size=1000 * MiB, free=900 * MiB)
NO_LIMITS = Retention(max_use=None, keep_free=None)


def entry(
    i: int, *, rule: str = "r", mib: int = 1, status: str = "complete", created: float | None = None
) -> Entry:
    return Entry(
        id=i,
        name=f"core.{i}",
        path=f"/state/cores/core.{i}",
        rule=rule,
        pid=100,
        comm="c",
        exe="/bin/c",
        cmdline=[],
        uid=0,
        cgroup="",
        unit="",
        time="",
        created=float(i) if created is None else created,
        trigger={},
        content="default",
        snapshot="frozen",
        size=mib * MiB,
        disk_bytes=mib * MiB if status == "complete" else 0,
        threads=1,
        freeze_seconds=0.0,
        dump_seconds=0.0,
        status=status,
    )


def ids(doomed: list[Entry]) -> list[int]:
    return [e.id for e in doomed]


def test_nothing_over_the_limits() -> None:
    assert plan([entry(1), entry(2)], Retention(), ROOMY, now=10.0) == []
    assert plan([], Retention(), Space(0, 0), now=0.0) == []


def test_max_use_oldest_first_sparing_the_new_core() -> None:
    es = [entry(i, mib=10) for i in range(1, 6)]
    ret = Retention(max_use=ByteLimit(25 * MiB), keep_free=None)
    assert ids(plan(es, ret, ROOMY, now=10.0)) == [1, 2, 3]
    # the core just published is spared, like coredump_vacuum()'s exclude fd
    tiny = Retention(max_use=ByteLimit(1), keep_free=None)
    assert ids(plan(es, tiny, ROOMY, now=10.0, spare={5})) == [1, 2, 3, 4]


def test_percent_limits_resolve_against_the_file_system() -> None:
    es = [entry(i, mib=10) for i in range(1, 5)]
    ret = Retention(max_use=ByteLimit(2, percent=True), keep_free=None)  # 2% of 1000 MiB = 20 MiB
    assert ids(plan(es, ret, ROOMY, now=10.0)) == [1, 2]


def test_keep_free_counts_what_is_already_doomed() -> None:
    es = [entry(i, mib=10) for i in range(1, 5)]
    # 15 MiB free, 30 wanted: two 10 MiB cores must go
    tight = Space(size=1000 * MiB, free=15 * MiB)
    assert ids(plan(es, Retention(max_use=None, keep_free=ByteLimit(30 * MiB)), tight, now=0.0)) == [1, 2]
    # with MaxAge taking the first one, only one more is needed
    ret = Retention(max_use=None, keep_free=ByteLimit(30 * MiB), max_age=5.0)
    old = [entry(1, mib=10, created=0.0), *es[1:]]
    assert ids(plan(old, ret, tight, now=5.5)) == [1, 2]


def test_pending_entries_are_never_chosen() -> None:
    es = [entry(1, status="pending"), entry(2, mib=5), entry(3, status="pending", created=0.0)]
    ret = Retention(max_use=ByteLimit(0), keep_free=ByteLimit(10**15), max_age=0.0, max_cores_per_rule=0)
    assert ids(plan(es, ret, Space(1, 0), now=100.0)) == [2]


def test_max_age() -> None:
    es = [entry(1, created=0.0), entry(2, created=50.0), entry(3, status="failed: x", created=10.0)]
    assert ids(plan(es, Retention(max_use=None, keep_free=None, max_age=60.0), ROOMY, now=100.0)) == [1, 3]


def test_per_rule_max_cores_and_max_use() -> None:
    es = [entry(i, rule="a" if i % 2 else "b", mib=4) for i in range(1, 9)]  # a: 1 3 5 7, b: 2 4 6 8
    ret = Retention(
        max_use=None,
        keep_free=None,
        max_cores_per_rule=3,
        rules={"b": RuleLimit(max_cores=None, max_use=8 * MiB)},
    )
    # a keeps its newest three; b keeps 8 MiB worth (two cores), and the default count too
    assert ids(plan(es, ret, ROOMY, now=10.0)) == [1, 2, 4]


def test_failed_rows_beyond_the_newest_ones() -> None:
    n = MAX_FAILED_ROWS + 3
    es = [entry(i, status="failed: boom") for i in range(1, n + 1)] + [entry(n + 1)]
    assert ids(plan(es, NO_LIMITS, ROOMY, now=0.0)) == [1, 2, 3]
