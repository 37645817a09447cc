"""Finding resident pages: PAGEMAP_SCAN and the /proc/PID/pagemap fallback must agree."""

from __future__ import annotations

import itertools

import pytest

from snapd import kernel, procfs
from snapd.core.pages import PageMap
from snapd.kernel import Feature

pytestmark = pytest.mark.kernel


@pytest.mark.lane
def test_scan_and_fallback_agree(compile_victim, spawn):
    v = spawn([compile_victim("bigmem"), 64, 10])
    buf = int(v.ready_line.split()[1], 16)
    anon = [m for m in procfs.smaps(v.pid) if not m.file_backed and m.start < 1 << 47]
    with PageMap(v.pid) as fast, PageMap(v.pid) as slow:
        slow.scan_ok = False  # as on kernels before 6.7
        for m in anon:
            assert fast.present(m.start, m.end) == slow.present(m.start, m.end), m
        assert fast.scan_ok is kernel.has(Feature.PAGEMAP_SCAN)
        # the 64 MiB buffer (its VMA may have merged with neighbours): exactly 10 MiB are there
        big = next(m for m in anon if m.start <= buf < m.end)
        runs = slow.present(big.start, big.end)
        end = buf + (64 << 20)
        assert sum(max(0, min(e, end) - max(s, buf)) for s, e in runs) == 10 << 20


@pytest.mark.lane
def test_scan_and_fallback_agree_on_many_runs(compile_victim, spawn, tmp_path):
    """An 80 MiB run beside 8 MiB of every third page (stagecopy): 6.18 returned all of that
    mapping's regions with walk_end 6 MiB in, then the same regions again from there; taken
    twice, they made a fork dump write outside its output window (memory.copy_runs)."""
    v = spawn([compile_victim("stagecopy"), 80, tmp_path / "stagecopy.map"])
    anon = [m for m in procfs.smaps(v.pid) if not m.file_backed and m.start < 1 << 47]
    with PageMap(v.pid) as fast, PageMap(v.pid) as slow:
        slow.scan_ok = False
        for m in anon:
            runs = fast.present(m.start, m.end)
            assert runs == slow.present(m.start, m.end), m
            assert all(a[1] < b[0] for a, b in itertools.pairwise(runs)), "sorted, disjoint, merged"
