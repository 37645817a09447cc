"""Cores as hostile input: cyclic and garbage stacks, 5000 threads, truncated and forged files.
Every report ends within its deadline, truncated or failed with one line, never a traceback."""

from __future__ import annotations

import os
import random
import struct
import time
from pathlib import Path

import pytest

from snapd.report import ReportLimits, render_text, run_report
from snapd.report.corefile import NT_AUXV, NT_FILE, NT_PRPSINFO, NT_PRSTATUS, read_notes
from snapd.report.derived import Piece, build_core
from support.report import dump, functions, thread_of

pytestmark = pytest.mark.kernel

DEADLINE = 60.0


def bounded(core: Path, **kw: object) -> dict:
    limits = kw.pop("limits", ReportLimits(deadline=DEADLINE))
    t0 = time.monotonic()
    rep = run_report(str(core), limits=limits, **kw)  # type: ignore[arg-type]
    took = time.monotonic() - t0
    assert took < limits.deadline + 15, took
    if rep["error"] is not None:
        assert "\n" not in rep["error"] and "Traceback" not in rep["error"], rep["error"]
    render_text(rep)  # renders whatever it holds
    return rep


def rebuild(src: Path, out: Path, threads: int | None = None, seed: int = 0, scramble: bool = False) -> Path:
    """A copy of a real core through our own writer: optionally ``threads`` copies of its first
    thread (tids 1000000+), or every register and every stack byte scrambled."""
    rnd = random.Random(seed)
    with open(src, "rb") as f:
        notes = read_notes(f)
        sps = [notes.regs(t)[19] for t in notes.tids]
        pieces = []
        for seg in notes.loads:
            data = notes.read(f, seg.vaddr, seg.filesz) if seg.filesz else b""
            if scramble and any(seg.vaddr <= sp < seg.vaddr + seg.memsz for sp in sps):
                data = rnd.randbytes(len(data))
            pieces.append(Piece(seg.vaddr, seg.memsz, seg.flags, data))
    prstatus = [notes.prstatus[t] for t in notes.tids]
    if threads is not None:
        prstatus = []
        for i in range(threads):
            raw = bytearray(notes.prstatus[notes.tids[i % len(notes.tids)]])
            struct.pack_into("<i", raw, 32, 1_000_000 + i)
            prstatus.append(bytes(raw))
    if scramble:
        prstatus = [d[:112] + rnd.randbytes(27 * 8) + d[112 + 27 * 8 :] for d in prstatus]
    out_notes = [(b"CORE", NT_PRSTATUS, d) for d in prstatus]
    out_notes += [
        (b"CORE", NT_PRPSINFO, notes.prpsinfo),
        (b"CORE", NT_AUXV, notes.auxv),
        (b"CORE", NT_FILE, notes.file),
    ]
    out.write_bytes(build_core(out_notes, pieces))
    return out


@pytest.fixture
def threads_core(compile_victim, spawn, tmp_path):
    v = spawn([compile_victim("threads")])
    return dump(v.pid, tmp_path / "core.threads")


def test_cyclic_and_garbage_frames(compile_victim, spawn, tmp_path):
    v = spawn([compile_victim("rpt_hostile")])
    core = dump(v.pid, tmp_path / "core.hostile")
    rep = bounded(core, limits=ReportLimits(deadline=DEADLINE, max_frames=64))
    assert rep["error"] is None, rep["error"]
    assert rep["threads_total"] == 3
    names = {f for t in rep["threads"] for f in functions(t)}
    assert "rpt_cyclic_frames" in names and "rpt_garbage_stack" in names
    for t in rep["threads"]:
        assert len(t["frames"]) <= 64
    cyc = next(t for t in rep["threads"] if "rpt_cyclic_frames" in functions(t))
    assert functions(cyc)[0] == "rpt_cyclic_frames"


def test_scrambled_registers_and_stacks(threads_core, tmp_path):
    for seed in range(3):
        core = rebuild(threads_core, tmp_path / f"core.scrambled{seed}", seed=seed, scramble=True)
        rep = bounded(core)
        assert rep["error"] is None or rep["error"], rep
        if rep["error"] is None:
            assert len(rep["threads"]) == 4
            assert all(len(t["frames"]) <= 64 for t in rep["threads"])


def test_5000_threads_truncated_to_the_limit(threads_core, tmp_path):
    core = rebuild(threads_core, tmp_path / "core.5000", threads=5000)
    rep = bounded(core, firing_tid=1_004_321)
    assert rep["error"] is None, rep["error"]
    assert rep["threads_total"] == 5000 and rep["truncated"]
    assert len(rep["threads"]) == 64
    assert rep["threads"][0]["tid"] == 1_004_321 and rep["threads"][0]["firing"]
    assert "park" in functions(thread_of(rep, 1_000_001))
    assert "4936 more thread(s) not shown (64 of 5000)" in render_text(rep)


def test_truncated_core_files(threads_core, tmp_path):
    data = threads_core.read_bytes()
    with open(threads_core, "rb") as f:
        notes = read_notes(f)
    first_load = min(s.offset for s in notes.loads if s.filesz)
    cuts = [0, 3, 64, 200, first_load // 2, first_load + 4096, len(data) // 2, len(data) - 1]
    for cut in cuts:
        core = tmp_path / f"core.cut{cut}"
        core.write_bytes(data[:cut])
        rep = bounded(core)
        if rep["error"] is None:
            # what it could read; every thread it lists is one of the core's
            assert {t["tid"] for t in rep["threads"]} <= set(notes.tids), cut
        else:
            assert rep["threads"] == [], cut


def test_not_a_core(tmp_path):
    for name, content in {
        "empty": b"",
        "text": b"hello\n" * 100,
        "random": random.Random(1).randbytes(1 << 16),
        "elf-exec": Path("/usr/bin/true").read_bytes(),
        "huge-phnum": b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, 0xFFFF, 64, 0, 0),
    }.items():
        core = tmp_path / name
        core.write_bytes(content)
        rep = bounded(core)
        assert rep["error"], name
    rep = bounded(tmp_path / "missing")
    assert "No such file" in rep["error"]
    os.symlink("/etc/shadow", tmp_path / "link")
    assert bounded(tmp_path / "link")["error"]  # O_NOFOLLOW: a planted link is not followed


def test_deadline_kills_the_worker(threads_core, tmp_path):
    """A report that cannot finish in time is killed at its deadline. The deadline is twice what
    the same worker took here for the 4-thread core; the core given has 50000 threads, all to be
    unwound, which costs that worker tens of times more on any machine."""
    t0 = time.monotonic()
    assert run_report(str(threads_core), limits=ReportLimits(deadline=DEADLINE))["error"] is None
    deadline = round(max(0.3, 2 * (time.monotonic() - t0)), 2)
    big = rebuild(threads_core, tmp_path / "core.50000", threads=50_000)
    t0 = time.monotonic()
    rep = run_report(str(big), limits=ReportLimits(deadline=deadline, max_threads=50_000))
    assert time.monotonic() - t0 < deadline + 15
    assert rep["error"] and f"timed out after {deadline:g} s" in rep["error"], rep["error"]
    assert rep["threads"] == []


def test_memory_limit(threads_core):
    rep = run_report(str(threads_core), limits=ReportLimits(memory=64 << 20))
    assert rep["error"], rep
