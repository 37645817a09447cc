"""Mappings of a halted process without a page-table walk: smaps before the halt, checked."""

from __future__ import annotations

import dataclasses

import pytest

from snapd import kernel, procfs
from snapd.core.pages import PageMap
from snapd.core.snapshot import halted_mappings
from snapd.kernel import Feature

pytestmark = pytest.mark.kernel


@pytest.mark.lane
def test_unchanged_layout_reuses_the_early_read(compile_victim, spawn):
    """No page-table walk while halted, with PAGEMAP_SCAN or without it (its fallback reads
    /proc/PID/pagemap for the private file mappings only)."""
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


@pytest.mark.lane
def test_written_file_mapping_is_noticed(compile_victim, spawn):
    """A private file mapping written after the early read (its Anonymous was 0 then) is seen as
    written: it must be classified `data` and dumped by default."""
    exe = compile_victim("threads")
    v = spawn([exe])
    pre = procfs.smaps(v.pid)
    written = [m for m in pre if m.file_backed and not m.shared and m.anonymous]
    readonly = [m for m in pre if m.file_backed and not m.shared and not m.anonymous]
    assert written and readonly
    with PageMap(v.pid) as pm, PageMap(v.pid) as slow:
        slow.scan_ok = False  # the /proc/PID/pagemap path, as on kernels before 6.7
        for m in written:
            assert pm.has_anon(m.start, m.end) and slow.has_anon(m.start, m.end), m
        for m in readonly:
            assert not pm.has_anon(m.start, m.end) and not slow.has_anon(m.start, m.end), m
        assert pm.scan_ok is kernel.has(Feature.PAGEMAP_SCAN)
    # pretend the early read had missed the writes: the check while halted restores them
    blind = [dataclasses.replace(m, anonymous=0) for m in pre]
    got = {m.start: m.anonymous for m in halted_mappings(v.pid, blind)}
    assert all(got[m.start] > 0 for m in written)
    assert all(got[m.start] == 0 for m in readonly)
