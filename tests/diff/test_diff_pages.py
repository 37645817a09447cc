"""The page comparison on small sparse files, against a page-by-page reference (no root)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapd.diff.pages import PAGE, Comparer, Counted, Source, clip, data_runs, resident, union

# A page's content on one side: a hole, zeros written as data, or one of two patterns.
HOLE, ZERO, X, Y = "hole", "zero", "x", "y"
CONTENT = {ZERO: bytes(PAGE), X: b"x" * PAGE, Y: b"x" * (PAGE - 1) + b"y"}


def write_pages(path: Path, kinds: list[str], lead: int = 0) -> None:
    """A file of ``lead`` header bytes then one page per kind; holes are never written."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, lead + len(kinds) * PAGE)
        for i, k in enumerate(kinds):
            if k != HOLE:
                os.pwrite(fd, CONTENT[k], lead + i * PAGE)
    finally:
        os.close(fd)


def reference(ka: list[str], kb: list[str]) -> int:
    """Pages whose bytes differ, a hole reading as zeros."""
    return sum(
        (CONTENT.get(a, bytes(PAGE))) != (CONTENT.get(b, bytes(PAGE))) for a, b in zip(ka, kb, strict=True)
    )


def compare_files(
    pa: Path,
    pb: Path,
    n: int,
    lead_a: int = 0,
    lead_b: int = 0,
    *,
    window: int = 4 * PAGE,
    workers: int = 1,
    use_mmap: bool = True,
) -> tuple[int, int, list[tuple[int, int]]]:
    fa, fb = os.open(pa, os.O_RDONLY), os.open(pb, os.O_RDONLY)
    sa, sb = Source(str(pa), fa, window, use_mmap), Source(str(pb), fb, window, use_mmap)
    cmp = Comparer(sa, sb, window, workers)
    try:
        length = n * PAGE
        ra = Counted(data_runs(str(pa), fa, lead_a, lead_a + length))
        rb = Counted(data_runs(str(pb), fb, lead_b, lead_b + length))
        pd = cmp.compare(
            lead_a, lead_b, length, union(clip(ra, lead_a, length), clip(rb, lead_b, length), length)
        )
        return pd.changed, ra.drain() + rb.drain(), pd.ranges
    finally:
        cmp.close()
        os.close(fa)
        os.close(fb)


def test_holes_are_skipped_and_read_as_zeros(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_pages(a, [HOLE, ZERO, X, HOLE, X, HOLE])
    write_pages(b, [ZERO, HOLE, X, X, Y, HOLE])
    changed, res, ranges = compare_files(a, b, 6)
    # hole/zero and zero/hole are equal; X/X equal; hole/X and X/Y differ
    assert changed == 2
    assert ranges == [(3 * PAGE, 5 * PAGE)]
    assert res == (3 + 4) * PAGE  # data pages of A, then of B


def test_data_runs_and_resident(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_pages(p, [HOLE] * 3 + [X] * 2 + [HOLE] * 10 + [ZERO])
    fd = os.open(p, os.O_RDONLY)
    try:
        assert list(data_runs(str(p), fd, 0, 16 * PAGE)) == [(3 * PAGE, 5 * PAGE), (15 * PAGE, 16 * PAGE)]
        assert list(data_runs(str(p), fd, 4 * PAGE, 15 * PAGE)) == [(4 * PAGE, 5 * PAGE)]
        assert resident(str(p), fd, 0, 16 * PAGE) == 3 * PAGE
        assert resident(str(p), fd, 5 * PAGE, 10 * PAGE) == 0
    finally:
        os.close(fd)


def test_union_joins_short_gaps_and_whole_pages() -> None:
    runs = list(union([(0, 100), (10 * PAGE, 11 * PAGE)], [(PAGE + 5, 2 * PAGE)], 64 * PAGE, gap=PAGE))
    assert runs == [(0, 2 * PAGE), (10 * PAGE, 11 * PAGE)]
    assert list(union([], [], 8 * PAGE)) == []


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("workers", [1, 2])
def test_windows_offsets_and_workers(tmp_path: Path, use_mmap: bool, workers: int) -> None:
    """Across window boundaries, at different file offsets on each side, mapped or read."""
    rng = random.Random(12)
    n = 37
    ka = [rng.choice([HOLE, ZERO, X, Y]) for _ in range(n)]
    kb = [rng.choice([HOLE, ZERO, X, Y]) for _ in range(n)]
    a, b = tmp_path / "a", tmp_path / "b"
    write_pages(a, ka, lead=3 * PAGE)
    write_pages(b, kb, lead=8 * PAGE)
    changed, _, _ = compare_files(a, b, n, 3 * PAGE, 8 * PAGE, workers=workers, use_mmap=use_mmap)
    assert changed == reference(ka, kb)


def test_unaligned_offsets_fall_back_to_reads(tmp_path: Path) -> None:
    """gdb does not page-align its segments' file offsets; the compare must not care."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_pages(a, [X, Y, X], lead=13)
    write_pages(b, [X, X, X], lead=64)
    assert compare_files(a, b, 3, 13, 64)[0] == 1


def test_partial_last_page_is_padded(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (PAGE + 100))
    b.write_bytes(b"x" * PAGE + b"x" * 99 + b"z")
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    sa, sb = Source(str(a), fa, 4 * PAGE), Source(str(b), fb, 4 * PAGE)
    try:
        pd = Comparer(sa, sb, 4 * PAGE).compare(0, 0, PAGE + 100, [(0, 2 * PAGE)])
        assert (pd.changed, pd.compared) == (1, PAGE + 100)
    finally:
        os.close(fa)
        os.close(fb)


kinds = st.lists(st.sampled_from([HOLE, ZERO, X, Y]), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matches_reference(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    ka = data.draw(kinds)
    kb = data.draw(st.lists(st.sampled_from([HOLE, ZERO, X, Y]), min_size=len(ka), max_size=len(ka)))
    window = data.draw(st.sampled_from([PAGE, 3 * PAGE, 16 * PAGE]))
    d = tmp_path_factory.mktemp("pages")
    write_pages(d / "a", ka)
    write_pages(d / "b", kb)
    changed, _, ranges = compare_files(d / "a", d / "b", len(ka), window=window)
    assert changed == reference(ka, kb)
    assert sum(e - s for s, e in ranges) <= changed * PAGE
