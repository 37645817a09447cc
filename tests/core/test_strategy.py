"""The copy strategy: every method writes the same core; the calibration is cached, reused and
measured again when stale, never while a target is halted; a staging budget smaller than the
dump still gives a correct core. Behaviour only: no figure here depends on the machine's speed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from snapd.core import calibrate, strategy, write_core
from snapd.core.calibrate import Calibration, Rates
from snapd.core.staging import Stats
from snapd.core.strategy import Method
from snapd.errors import SnapdError
from snapd.freeze import halt
from support.proc import proc_state, tracer_of

pytestmark = pytest.mark.kernel

PAGE = 4096


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("SNAPD_CACHE_DIR", str(d))
    monkeypatch.delenv("SNAPD_COPY_METHOD", raising=False)
    monkeypatch.delenv("SNAPD_STAGING_BUDGET", raising=False)
    monkeypatch.delenv("SNAPD_STAGING_HEAD", raising=False)
    return d


def start_stagecopy(compile_victim, spawn, tmp_path: Path, mib: int = 32):  # type: ignore[no-untyped-def]
    """A victim whose memory never changes: MIB MiB in one run, many small runs, PROT_NONE,
    pages beyond EOF, MADV_DONTFORK. Without rseq: the kernel writes the CPU a thread last ran
    on into its struct rseq (kernel/rseq.c), which would differ between two dumps."""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
    return spawn([compile_victim("stagecopy"), mib, tmp_path / f"stagecopy.{mib}.map"], env=env)


@pytest.fixture
def stagecopy(compile_victim, spawn, tmp_path):
    return start_stagecopy(compile_victim, spawn, tmp_path)


def segments(path: Path) -> list[tuple[int, int, int, str]]:
    """(vaddr, memsz, filesz, sha256 of the data) of every PT_LOAD."""
    out = []
    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD":
                digest = hashlib.sha256(seg.data()).hexdigest() if seg["p_filesz"] else ""
                out.append((seg["p_vaddr"], seg["p_memsz"], seg["p_filesz"], digest))
    return out


def read_at(path: Path, addr: int, length: int) -> bytes:
    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
                f.seek(seg["p_offset"] + addr - seg["p_vaddr"])
                return f.read(length)
    raise AssertionError(f"{addr:#x} not in the core")


def pattern(seed: int, pages: int) -> bytes:
    """What tests/victims/stagecopy.c fill() writes."""
    out = bytearray()
    for p in range(pages):
        x = seed + p
        for _ in range(PAGE // 8):
            x = (x * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
            out += x.to_bytes(8, "little")
    return bytes(out)


def check_content(core: Path, ready: str) -> None:
    big, small, none, filemap, dontfork = (int(x, 16) for x in ready.split()[1:])
    assert read_at(core, big, 2 * PAGE) == pattern(1, 2)
    last = (32 << 20) - PAGE
    assert read_at(core, big + last, PAGE) == pattern(1 + last // PAGE, 1)
    assert read_at(core, small + 3 * PAGE, PAGE) == pattern(1000000 + 3 * PAGE, 1)
    assert read_at(core, small + PAGE, PAGE) == bytes(PAGE)  # never written: a hole, zeros
    assert read_at(core, none, PAGE) == pattern(2000000, 1)  # PROT_NONE, read with FOLL_FORCE
    assert read_at(core, filemap, PAGE) == pattern(3000000, 1)
    assert read_at(core, filemap + PAGE, PAGE) == bytes(PAGE)  # beyond EOF: a hole
    assert read_at(core, dontfork, PAGE) == pattern(4000000, 1)


@pytest.mark.parametrize("snapshot", ["frozen", "fork"])
def test_every_method_writes_the_same_core(stagecopy, tmp_path, cache, snapshot):
    ref = None
    for method in [m.value for m in Method]:
        core = tmp_path / f"core.{snapshot}.{method.replace('+', '_')}"
        info = write_core(stagecopy.pid, str(core), snapshot=snapshot, method=method, sync=False)
        assert info.copy is not None and info.copy.method == method, info.copy
        assert info.snapshot == snapshot
        segs = segments(core)
        if ref is None:
            ref = segs
            check_content(core, stagecopy.ready_line)
        assert segs == ref, method
        assert info.disk_bytes < info.apparent_size  # still sparse
        core.unlink()


@pytest.mark.parametrize("snapshot", ["frozen", "fork"])
def test_parallel_readers_write_the_same_core(compile_victim, spawn, tmp_path, cache, monkeypatch, snapshot):
    """Copies of 64 MiB or more are shared between readers, one thread each."""
    from snapd.core import writer

    v = start_stagecopy(compile_victim, spawn, tmp_path, 80)
    got = []
    for n in (1, 2):
        monkeypatch.setattr(writer, "READERS", n)
        core = tmp_path / f"core.{n}"
        write_core(v.pid, str(core), snapshot=snapshot, sync=False)
        got.append(segments(core))
        core.unlink()
    assert got[0] == got[1]


def test_a_budget_smaller_than_the_dump(stagecopy, tmp_path, cache):
    full = tmp_path / "full"
    write_core(stagecopy.pid, str(full), sync=False, budget=0)
    for budget in (0, 8 << 20, "1%"):
        core = tmp_path / f"core.{budget}"
        info = write_core(stagecopy.pid, str(core), sync=False, budget=budget)
        assert info.copy is not None and info.copy.staging_used <= info.copy.budget_bytes
        assert segments(core) == segments(full)
        check_content(core, stagecopy.ready_line)


def test_staging_only_what_is_needed(stagecopy, tmp_path, cache):
    """The staging beyond the faulted-in head is allocated only when the reader needs it."""
    info = write_core(stagecopy.pid, str(tmp_path / "core"), sync=False, method="direct+buffered")
    c = info.copy
    assert c is not None
    assert c.staging_head <= c.staging_used <= c.staging_bytes <= c.budget_bytes


def test_faulting_in_the_head_stops_at_its_deadline(compile_victim, spawn, tmp_path, cache, monkeypatch):
    """The head is faulted in before the halt, which delays the moment the core shows: at most
    HEAD_SECONDS of it, however slow fresh memory is (the hypervisor may have taken it back).
    What is left is faulted in on demand, and the core is the same. The rate it did is what
    the next dump's head is sized by."""
    from snapd.core import pool as poolmod

    region = poolmod.Region(8 * poolmod.SLICE, populate=0)
    try:
        assert poolmod._populate_parallel(region, 8 * poolmod.SLICE, time.monotonic() - 1) == 0
        assert region.populated == 0
        assert poolmod._populate_parallel(region, 8 * poolmod.SLICE) == 8 * poolmod.SLICE
    finally:
        region.close()

    v = start_stagecopy(compile_victim, spawn, tmp_path, 96)
    full = tmp_path / "full"
    write_core(v.pid, str(full), sync=False, budget=0)
    slow = poolmod.Region.populate
    # a disk far slower than memory, whatever this machine's: the dump is staged
    measured = calibrate.get(str(tmp_path), cache_dir=cache)
    assert measured is not None
    disk = replace(measured.rates, direct=measured.rates.memory / 20)
    monkeypatch.setattr(calibrate, "get", lambda *a, **kw: replace(measured, rates=disk))

    def crawl(self: poolmod.Region, offset: int, length: int) -> None:
        time.sleep(0.05)  # memory the hypervisor must find again, exaggerated
        slow(self, offset, length)

    monkeypatch.setattr(poolmod.Region, "populate", crawl)
    monkeypatch.setattr(strategy, "HEAD_SECONDS", 0.01)
    monkeypatch.setenv("SNAPD_STAGING_HEAD", "all")  # planned: the whole staging
    core = tmp_path / "core"
    info = write_core(v.pid, str(core), sync=False, method="direct")
    c = info.copy
    assert c is not None and c.staging_bytes > 4 * poolmod.SLICE, c
    assert c.staging_head < c.staging_bytes, "stopped at the deadline"
    assert c.staging_head <= 4 * poolmod.SLICE  # a slice per thread at most, once the deadline is past
    assert c.staging_used > c.staging_head, "the rest faulted in while halted, on demand"
    assert segments(core) == segments(full)
    monkeypatch.undo()

    now = time.time()
    rates = Rates(memory=5e9, populate=8e9, direct=1e9, buffered=1e9, split=1e9, mmap=1e9)
    kw = {"frozen": True, "sync": False, "have_direct": True, "cap": 8 << 30}
    test_said = strategy.choose(Calibration("k", "ext4", rates, now, 0.1), 4 << 30, **kw)
    assert test_said.head > 2e9 * strategy.HEAD_SECONDS
    slow_seen = Calibration("k", "ext4", rates, now, 0.1, observed={"populate": (5e8, 1 << 30, now)})
    assert strategy.choose(slow_seen, 4 << 30, **kw).head <= 5e8 * strategy.HEAD_SECONDS
    # what the staged dump reported is an observation of it
    st = Stats(written={"direct": 1 << 30}, write_seconds=1.0, head_bytes=256 << 20, head_seconds=0.5)
    monkeypatch.setenv("SNAPD_CACHE_DIR", str(cache))
    cal = calibrate.get(str(tmp_path), cache_dir=cache)
    assert cal is not None
    strat = strategy.choose(cal, 1 << 30, **{**kw, "cap": 1 << 30})
    rep = strategy.report(strat, st, 0.1, frozen=True)
    assert rep.staging_head == 256 << 20 and rep.head_seconds == 0.5
    again = calibrate.get(str(tmp_path), cache_dir=cache, measure=False)
    assert again is not None and again.seen("populate") == (256 << 20) / 0.5


def test_calibration_is_cached_reused_and_redone_when_stale(tmp_path, cache):
    out = tmp_path / "out"
    out.mkdir()
    a = calibrate.get(str(out), cache_dir=cache)
    assert a is not None and a.source == "measured"
    assert a.rates.memory > 0 and a.seconds > 0
    assert not list(out.iterdir()), "the calibration's temp files must be removed"
    doc = json.loads((cache / "calibration.json").read_text())
    key, _ = calibrate.fs_key(str(out))
    assert list(doc["filesystems"]) == [key]

    b = calibrate.get(str(out), cache_dir=cache)
    assert b is not None and b.source == "cache" and b.measured_at == a.measured_at

    doc["filesystems"][key]["measured_at"] -= calibrate.MAX_AGE + 1  # too old
    (cache / "calibration.json").write_text(json.dumps(doc))
    c = calibrate.get(str(out), cache_dir=cache)
    assert c is not None and c.source == "measured" and c.measured_at > a.measured_at

    # A real dump 10x slower than predicted: remembered, and the entry goes stale.
    d = calibrate.get(str(out), cache_dir=cache)
    assert d is not None and d.source == "cache"
    seen = [calibrate.Observation("direct", 1e8, 256 << 20, predicted=1e9)]
    why = calibrate.observe_all(d, seen, cache_dir=cache)
    assert "256 MiB dump wrote at 100 MB/s" in why
    e = calibrate.get(str(out), cache_dir=cache, measure=False)
    assert e is not None and e.stale and e.seen("direct") == 1e8
    f = calibrate.get(str(out), cache_dir=cache)
    assert f is not None and f.source == "measured" and not f.stale
    assert f.seen("direct") == 1e8, "what real dumps did outlives a new measurement"


def test_the_cache_is_rewritten_only_when_a_dump_tells_something_new(tmp_path, cache):
    """Rewriting the cache at the end of a dump frees the old file's blocks, which waited up
    to 0.9 s for ext4's journal right after a dump: it is done only when the news matter."""
    out = tmp_path / "out"
    out.mkdir()
    cal = calibrate.get(str(out), cache_dir=cache)
    assert cal is not None
    path = cache / "calibration.json"

    def seen(*obs: calibrate.Observation) -> int:
        assert calibrate.observe_all(cal, list(obs), cache_dir=cache) == ""
        return path.stat().st_ino

    big = 256 << 20
    before = path.stat().st_ino
    first = seen(calibrate.Observation("direct", 1e9, big), calibrate.Observation("memory", 4e9, big))
    assert first != before, "first observations: written (both, in one rewrite)"
    again = seen(calibrate.Observation("direct", 1.2e9, big), calibrate.Observation("memory", 3.5e9, big))
    assert again == first, "rates within NOTE of the remembered ones: not rewritten"
    small = seen(calibrate.Observation("direct", 1e8, 1 << 20))
    assert small == first, "a small dump says nothing"
    changed = seen(calibrate.Observation("direct", 2e9, big))
    assert changed != first
    got = calibrate.get(str(out), cache_dir=cache, measure=False)
    assert got is not None and got.seen("direct") == 2e9 and got.seen("memory") == 4e9


def test_a_cache_that_cannot_be_written(tmp_path):
    ro = tmp_path / "ro"
    ro.write_text("a file, not a directory")
    a = calibrate.get(str(tmp_path), cache_dir=ro / "sub")
    assert a is not None and a.source == "memory"
    b = calibrate.get(str(tmp_path), cache_dir=ro / "sub")
    assert b is not None and b.measured_at == a.measured_at  # remembered by the process


def test_a_corrupt_cache_is_measured_again(tmp_path, cache):
    cache.mkdir()
    (cache / "calibration.json").write_text("{not json")
    a = calibrate.get(str(tmp_path), cache_dir=cache)
    assert a is not None and a.source == "measured"
    assert json.loads((cache / "calibration.json").read_text())["version"] == calibrate.VERSION


def test_the_cache_forgets_old_and_surplus_file_systems(cache):
    """Each tmpfs mount is a new file system: the cache keeps the newest few, none too old."""
    now = time.time()

    def entry(key: str, age: float) -> Calibration:
        return Calibration(key, "tmpfs", Rates(direct=1e9), now - age, 0.1)

    assert calibrate._store(cache, entry("old", calibrate.KEEP_FOR + 60))
    for i in range(calibrate.MAX_ENTRIES + 5):
        assert calibrate._store(cache, entry(f"fs{i:02d}", 100.0 - i))
    kept = json.loads((cache / "calibration.json").read_text())["filesystems"]
    assert len(kept) == calibrate.MAX_ENTRIES
    assert "old" not in kept and "fs00" not in kept  # the oldest measured go first
    assert f"fs{calibrate.MAX_ENTRIES + 4:02d}" in kept  # the one just stored stays


def test_never_measured_while_the_target_is_halted(stagecopy, tmp_path, cache, monkeypatch):
    v = stagecopy
    seen: list[str] = []
    real = calibrate.measure_dir

    def measure(*a: object, **kw: object) -> Calibration:
        seen.append(str(tracer_of(v.pid)))
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(calibrate, "measure_dir", measure)
    info = write_core(v.pid, str(tmp_path / "core"), sync=False)
    assert seen == ["0"], "measured once, before the halt"
    assert info.copy is not None and info.copy.calibration.startswith("measured")

    # Handed a target someone else halted: no measuring at all, the cache or nothing.
    (cache / "calibration.json").unlink()
    seen.clear()
    h = halt(v.pid)
    try:
        info = write_core(v.pid, str(tmp_path / "core2"), sync=False, halted=h)
    finally:
        h.resume()
    assert seen == []
    assert info.copy is not None and info.copy.calibration == "none"
    assert info.copy.staging_used == 0  # nothing faulted in while it was halted
    assert not (cache / "calibration.json").exists()


def test_choice_follows_the_measurements():
    def cal(**rates: float) -> Calibration:
        return Calibration("k", "ext4", Rates(memory=5e9, populate=2e9, **rates), time.time(), 0.1)

    kw = {"frozen": True, "sync": False, "have_direct": True, "cap": 1 << 30}
    fast_disk = cal(direct=3e9, buffered=1e9, split=3.2e9, mmap=1e9)
    assert strategy.choose(fast_disk, 1 << 30, **kw).method is Method.DIRECT  # split is not 25% better
    slow_disk = cal(direct=0.37e9, buffered=2.4e9, split=2.7e9, mmap=2e9)
    assert strategy.choose(slow_disk, 1 << 30, **kw).method is Method.SPLIT
    # With --sync the page cache must reach the disk too: no faster than O_DIRECT.
    assert strategy.choose(slow_disk, 1 << 30, **{**kw, "sync": True}).method is Method.DIRECT
    # mmap cannot be staged: never for a frozen copy; it may be for a fork's child.
    mapped = cal(direct=0.3e9, buffered=0.3e9, split=0.4e9, mmap=2e9)
    assert strategy.choose(mapped, 1 << 30, **kw).method is Method.SPLIT
    assert strategy.choose(mapped, 1 << 30, **{**kw, "frozen": False}).method is Method.MMAP
    # No O_DIRECT on this file system (tmpfs): buffered.
    assert strategy.choose(fast_disk, 1 << 30, **{**kw, "have_direct": False}).method is Method.BUFFERED
    # The page cache alone, never where O_DIRECT works (a test write may find warm memory).
    warm = cal(direct=1e9, buffered=4e9, split=1.05e9, mmap=1e9)
    assert strategy.choose(warm, 1 << 30, **kw).method is Method.DIRECT
    # No staging when the writers keep up with the reader; the reader's real rate counts.
    assert strategy.choose(cal(direct=4.5e9, buffered=1e9, split=4.5e9, mmap=1e9), 1 << 30, **kw).staging == 0
    now = time.time()
    slow_reader = Calibration(
        "k", "ext4", fast_disk.rates, now, 0.1, observed={"memory": (2e9, 1 << 30, now)}
    )
    assert strategy.choose(slow_reader, 1 << 30, **kw).staging == 0
    assert strategy.choose(fast_disk, 1 << 30, **{**kw, "frozen": False}).staging == 0
    # Nothing measured: O_DIRECT, everything staged.
    s = strategy.choose(None, 1 << 30, **kw)
    assert s.method is Method.DIRECT and s.staging > 0 and "not measured" in s.why
    # The staging never exceeds the budget; the head never exceeds the staging.
    s = strategy.choose(slow_disk, 8 << 30, **{**kw, "cap": 64 << 20})
    assert s.staging <= 64 << 20 and s.head <= s.staging
    # The head (faulted in before the halt) is as much as HEAD_SECONDS of faulting in allow.
    s = strategy.choose(cal(direct=0.3e9, buffered=1e9, split=1e9, mmap=1e9), 8 << 30, **kw)
    assert 0 < s.head < s.staging and s.head <= 2e9 * strategy.HEAD_SECONDS
    assert (
        strategy.choose(slow_disk, 64 << 20, **kw).head == strategy.choose(slow_disk, 64 << 20, **kw).staging
    )


def test_writers_are_expected_to_do_what_real_dumps_did(tmp_path, cache):
    """A calibration whose test write finds warm memory predicts writers 2x faster than real
    dumps achieve: predicting from it, every dump drifted, went stale and made the next one
    measure again before its halt. What a real dump did is the prediction from then on."""
    out = tmp_path / "out"
    out.mkdir()
    cal = calibrate.get(str(out), cache_dir=cache)
    assert cal is not None
    kw = {"frozen": True, "sync": False, "have_direct": True, "cap": 1 << 30}
    first = strategy.choose(cal, 1 << 30, **kw)
    assert first.predicted == strategy.rate_of(cal.rates, first.method)
    real = first.predicted / 4  # what the dump achieved: 4x slower than the test said
    why = calibrate.observe_all(
        cal, [calibrate.Observation(first.method.value, real, 1 << 30, first.predicted)], cache_dir=cache
    )
    assert why, "a dump 4x off its prediction makes the entry stale"
    again = calibrate.get(str(out), cache_dir=cache)
    assert again is not None and again.source == "measured" and not again.stale
    second = strategy.choose(again, 1 << 30, **kw)
    if second.method is first.method:
        assert second.predicted == real
        # the next dump does as the last one did: nothing to measure again
        obs = calibrate.Observation(second.method.value, real * 1.1, 1 << 30, second.predicted)
        assert calibrate.observe_all(again, [obs], cache_dir=cache) == ""
        third = calibrate.get(str(out), cache_dir=cache)
        assert third is not None and third.source == "cache" and not third.stale
        # Nor does one far off what the last dump did: that is the disk changing, not the test
        # being wrong; the next prediction is what this one did.
        assert second.predicted_seen
        st = Stats(written={"direct": 1 << 30}, write_seconds=(1 << 30) / (real * 4))
        assert strategy.report(second, st, 0.1, frozen=True).stale == ""
        fourth = calibrate.get(str(out), cache_dir=cache)
        assert fourth is not None and fourth.source == "cache" and not fourth.stale
        assert fourth.seen(second.method.value) == pytest.approx(real * 4)
    # With --sync buffered bytes reach the disk too: never predicted faster than O_DIRECT.
    now = time.time()
    rates = Rates(memory=5e9, populate=2e9, direct=0.4e9, buffered=2e9, split=2.5e9, mmap=1e9)
    seen_split = Calibration("k", "ext4", rates, now, 0.1, observed={Method.SPLIT.value: (3e9, 1 << 30, now)})
    from_seen = strategy.choose(seen_split, 1 << 30, **kw)
    assert from_seen.predicted == 3e9 and from_seen.predicted_seen
    slower = Stats(written={"direct": 1 << 29, "buffered": 1 << 29}, write_seconds=(1 << 30) / 0.5e9)
    assert strategy.report(from_seen, slower, 0.1, frozen=True).stale == "", "6x off a dump: no drift"
    # The choice follows what dumps did, too: a test that said both at once were 2.35 GB/s and
    # dumps that drained 1.08 GB/s with them lose to O_DIRECT's 1.46 GB/s; and a test that
    # caught the disk at a slow moment is overruled by the dumps before it.
    odd = Rates(memory=6e9, populate=2e9, direct=1.46e9, buffered=4e9, split=2.35e9, mmap=1.5e9)
    after = Calibration("k", "ext4", odd, now, 0.1, observed={Method.SPLIT.value: (1.08e9, 1 << 30, now)})
    assert strategy.choose(after, 1 << 30, **kw).method is Method.DIRECT
    slow_test = replace(odd, direct=0.31e9, split=0.27e9, mmap=0.45e9)
    seen_direct = {Method.DIRECT.value: (1.19e9, 1 << 30, now)}
    for snapshot in ({"frozen": True}, {"frozen": False}):
        chosen = strategy.choose(
            Calibration("k", "ext4", slow_test, now, 0.1, observed=seen_direct), 1 << 30, **{**kw, **snapshot}
        )
        assert chosen.method is Method.DIRECT and chosen.predicted == 1.19e9, snapshot
    from_test = strategy.choose(Calibration("k", "ext4", rates, now, 0.1), 1 << 30, **kw)
    assert not from_test.predicted_seen
    assert "dump wrote at 500 MB/s" in strategy.report(from_test, slower, 0.1, frozen=True).stale
    synced = strategy.choose(seen_split, 1 << 30, **{**kw, "sync": True})
    assert synced.predicted <= rates.direct


def test_the_head_is_what_the_writers_did_not_drain_beside_the_reader_last_time():
    """Staged before the halt: what a reader at its observed rate would outrun writers at the
    rate they drained beside a halted reader in an earlier dump; all of it until one was seen.
    The rest of the staging stays there to be faulted in on demand."""
    now = time.time()
    rates = Rates(memory=5e9, populate=8e9, direct=1e9, buffered=1e9, split=2e9, mmap=1e9)
    kw = dict(frozen=True, sync=False, have_direct=True, cap=8 << 30)
    first = strategy.choose(Calibration("k", "ext4", rates, now, 0.1), 1 << 30, **kw)
    assert first.method is Method.SPLIT and first.head == first.staging > 900 << 20

    def seen(beside: float) -> strategy.Strategy:
        key = strategy.halted_key(Method.SPLIT)
        observed = {"memory": (4e9, 1 << 30, now), key: (beside, 256 << 20, now)}
        return strategy.choose(Calibration("k", "ext4", rates, now, 0.1, observed=observed), 1 << 30, **kw)

    half = seen(2e9)  # the reader twice as fast as the writers: half of it, with a margin
    assert half.staging == first.staging
    assert (1 << 29) < half.head < 0.7 * (1 << 30)
    assert "drained 2,000 MB/s beside a reader at 4,000" in half.why
    assert seen(1e9).head > half.head > seen(3e9).head


def test_a_dump_sizes_the_next_ones_head_by_what_its_writers_drained(
    compile_victim, spawn, tmp_path, cache, monkeypatch
):
    """The loop closed on a real target: a staged frozen dump measures its writers beside the
    halted reader, and the next dump's head is sized from it. (Observations count from
    CHECK_MIN bytes, which a 96 MiB dump's writers may not reach while it is read: lowered.)"""
    monkeypatch.setattr(calibrate, "CHECK_MIN", 1 << 20)
    victim = start_stagecopy(compile_victim, spawn, tmp_path, mib=96)
    first = write_core(victim.pid, str(tmp_path / "first"), sync=False, method="direct+buffered")
    assert first.copy is not None and first.copy.staging_bytes > 0 and first.copy.beside_rate > 0
    assert "beside a reader" not in first.copy.why
    cal = calibrate.get(str(tmp_path), cache_dir=cache, measure=False)
    key = strategy.halted_key(Method(first.copy.method))
    assert cal is not None and cal.seen(key) == pytest.approx(first.copy.beside_rate), cal.observed
    second = write_core(victim.pid, str(tmp_path / "second"), sync=False, method="direct+buffered")
    c = second.copy
    assert c is not None and "staged before the halt: a dump here drained" in c.why
    assert c.staging_head <= c.staging_used <= c.staging_bytes
    assert segments(tmp_path / "second") == segments(tmp_path / "first")
    check_content(tmp_path / "second", victim.ready_line)


def test_writers_starting_up_are_not_a_measurement(tmp_path, cache):
    """A reader that waits at once (no staging) saw the writers write their first chunks only:
    their rate then is no rate, and must not size the next dump's head."""
    out = tmp_path / "out"
    out.mkdir()
    cal = calibrate.get(str(out), cache_dir=cache)
    assert cal is not None
    strat = strategy.choose(cal, 1 << 30, frozen=True, sync=False, have_direct=True, cap=1 << 30)
    key = strategy.halted_key(strat.method)
    few = Stats(read_bytes=1 << 30, read_seconds=0.5, drained_beside=4 << 20, beside_seconds=0.004)
    assert strategy.report(strat, few, 0.1, frozen=True).beside_rate == pytest.approx(1e9, rel=0.05)
    assert not calibrate.get(str(out), cache_dir=cache, measure=False).seen(key)  # type: ignore[union-attr]
    many = Stats(read_bytes=1 << 30, read_seconds=0.5, drained_beside=256 << 20, beside_seconds=0.2)
    strategy.report(strat, many, 0.1, frozen=True)
    got = calibrate.get(str(out), cache_dir=cache, measure=False)
    assert got is not None and got.seen(key) == pytest.approx((256 << 20) / 0.2)


def test_budget_values(monkeypatch):
    monkeypatch.delenv("SNAPD_STAGING_BUDGET", raising=False)
    assert strategy.budget("512M") == 512 << 20
    assert strategy.budget("1g") == 1 << 30
    assert strategy.budget(4096) == 4096
    assert 0 < strategy.budget("10%") < strategy.budget("20%")
    assert strategy.budget(None) == strategy.budget("25%")
    monkeypatch.setenv("SNAPD_STAGING_BUDGET", "64M")
    assert strategy.budget(None) == 64 << 20
    with pytest.raises(SnapdError, match="staging budget 'lots'"):
        strategy.budget("lots")


SHARED_VICTIM = """
import mmap, sys
m = mmap.mmap(-1, 96 << 20, flags=mmap.MAP_SHARED)
m.write(b"s" * (96 << 20))
print("ready", flush=True)
sys.stdin.read()
"""


def test_auto_snapshot(compile_victim, spawn, tmp_path, cache, monkeypatch):
    """Fork for much private memory; freeze small processes, and those whose memory is mostly
    shared (a fork copies shared memory live, so it would gain nothing)."""
    small = start_stagecopy(compile_victim, spawn, tmp_path, 8)
    big = start_stagecopy(compile_victim, spawn, tmp_path, 96)
    shared = spawn(["/usr/bin/python3", "-c", SHARED_VICTIM])
    monkeypatch.setattr(strategy, "AUTO_FORK_MIN", 64 << 20)
    got = [
        write_core(v.pid, str(tmp_path / f"core.{v.pid}"), snapshot="auto", sync=False).snapshot
        for v in (small, big, shared)
    ]
    assert got == ["frozen", "fork", "frozen"]


def test_gcore_verbose(stagecopy, snapd_cmd, tmp_path, cache):
    v = stagecopy
    env = {**os.environ, "SNAPD_CACHE_DIR": str(cache)}
    r = subprocess.run(
        [*snapd_cmd, "gcore", "-v", "-o", str(tmp_path / "core"), str(v.pid)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(rf"snapd gcore: {tmp_path}/core\.{v.pid} dumped \(frozen \d+ ms\)", lines[0]), lines
    assert all(line.startswith("snapd gcore: ") for line in lines), lines
    text = "\n".join(lines)
    assert re.search(r"copy: (direct|direct\+buffered) \((fastest|both at once) measured", text), text
    assert re.search(r"measured: memory [\d.]+ [GM]B/s, .*O_DIRECT", text), text
    bad = subprocess.run(
        [*snapd_cmd, "gcore", "--staging-budget", "lots", str(v.pid)], capture_output=True, text=True, env=env
    )
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "staging budget" in bad.stderr


def test_calibration_runs_beside_a_running_copy():
    """Two dumps at once (the daemon's worker and a `snapd gcore`): the cache stays valid."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        errors: list[BaseException] = []

        def one() -> None:
            try:
                calibrate.get(d, cache_dir=Path(d) / "cache")
            except BaseException as err:  # pragma: no cover
                errors.append(err)

        ts = [threading.Thread(target=one) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        assert (
            json.loads((Path(d) / "cache" / "calibration.json").read_text())["version"] == calibrate.VERSION
        )


def test_two_copies_at_once_never_share_chunks():
    """The warm chunks are lent to one copy at a time; another one gets chunks of its own."""
    from snapd.core.pool import Pool, warm

    warm()
    with Pool() as a, Pool(8 << 20) as b:
        assert a.borrowed and not b.borrowed
        assert set(a.chunks).isdisjoint(b.chunks)
    with Pool() as c:
        assert c.borrowed and c.chunks == a.chunks


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("a bug")])
def test_a_writer_failing_never_leaves_the_target_halted(stagecopy, tmp_path, cache, monkeypatch, error):
    """Whatever a writer thread dies of, the reader stops, the target runs on, no file is left."""
    from snapd.core.staging import Copier

    def fail(*a: object, **kw: object) -> None:
        raise error

    monkeypatch.setattr(Copier, "_write", fail)
    with pytest.raises((SnapdError, RuntimeError)):
        write_core(stagecopy.pid, str(tmp_path / "core"), sync=False, budget=0)
    assert tracer_of(stagecopy.pid) == 0 and proc_state(stagecopy.pid) == "S"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("core", ".snapd-partial"))]
