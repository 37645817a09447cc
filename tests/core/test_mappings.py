"""Mappings of a halted process without a page-table walk: smaps before the halt, checked."""

from __future__ import annotations

import dataclasses

import pytest

from snapd import procfs
from snapd.core.pages import PageMap
from snapd.core.snapshot import halted_mappings

pytestmark = pytest.mark.kernel


def test_unchanged_layout_reuses_the_early_read(compile_victim, spawn):
    v = spawn([compile_victim("threads")])
    pre = procfs.smaps(v.pid)
    assert halted_mappings(v.pid, pre) is pre


def test_changed_layout_reads_smaps_again(compile_victim, spawn):
    v = spawn([compile_victim("threads")])
    pre = procfs.smaps(v.pid)
    stale = [*pre[:-1], dataclasses.replace(pre[-1], end=pre[-1].end + 4096)]  # "moved" since
    fresh = halted_mappings(v.pid, stale)
    assert fresh is not stale
    assert [(m.start, m.end) for m in fresh] == [(m.start, m.end) for m in procfs.maps(v.pid)]


def test_written_file_mapping_is_noticed(compile_victim, spawn):
    """A private file mapping written after the early read (its Anonymous was 0 then) is seen as
    written: it must be classified `data` and dumped by default."""
    exe = compile_victim("threads")
    v = spawn([exe])
    pre = procfs.smaps(v.pid)
    written = [m for m in pre if m.file_backed and not m.shared and m.anonymous]
    readonly = [m for m in pre if m.file_backed and not m.shared and not m.anonymous]
    assert written and readonly
    with PageMap(v.pid) as pm:
        assert all(pm.has_anon(m.start, m.end) for m in written)
        assert not any(pm.has_anon(m.start, m.end) for m in readonly)
    # pretend the early read had missed the writes: the check while halted restores them
    blind = [dataclasses.replace(m, anonymous=0) for m in pre]
    got = {m.start: m.anonymous for m in halted_mappings(v.pid, blind)}
    assert all(got[m.start] > 0 for m in written)
    assert all(got[m.start] == 0 for m in readonly)
