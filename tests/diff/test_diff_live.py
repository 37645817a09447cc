"""snapd diff on real cores of a real process, driven step by step between them (root)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.core import write_core
from snapd.diff import diff_cores, series
from snapd.diff.model import Diff, MappingDelta
from snapd.procfs.context import capture
from support.victims import Victim, ask

pytestmark = pytest.mark.kernel

MiB = 1 << 20


def holding(d: Diff, addr: int) -> MappingDelta:
    return next(m for m in d.mappings if m.start <= addr < m.end)


@pytest.fixture
def victim(compile_victim: Callable[..., Path], spawn: Callable[..., Victim]) -> Callable[..., Victim]:
    exe = compile_victim("diff_victim")
    return lambda *args, **kw: spawn([exe, *map(str, args)], **kw)


def test_what_changed_between_two_cores(victim: Callable[..., Victim], tmp_path: Path) -> None:
    v = victim(32)
    buf = int(v.ready_line.split()[1], 16)
    a, b = tmp_path / "a.core", tmp_path / "b.core"
    ctx_a = capture(v.pid)
    write_core(v.pid, str(a))
    ask(v, "w 1000")
    ask(v, "h 64")
    fd = int(ask(v, "o /etc/hostname"))
    tid = int(ask(v, "t"))
    ctx_b = capture(v.pid)
    write_core(v.pid, str(b))

    d = diff_cores(str(a), str(b), top=0, context=(ctx_a, ctx_b))
    heap = next(c for c in d.by_class if c.cls == "heap")
    assert 64 * MiB <= heap.delta <= 68 * MiB, heap  # allocator overhead: a few MiB at most
    assert 64 * MiB <= d.resident_delta <= 70 * MiB
    m = holding(d, buf)
    assert (m.cls, m.status) == ("anon", "same")
    assert 1000 <= m.changed_pages <= 1010, m
    assert m.changed_ranges[0][0] == buf  # the first rewritten page is the buffer's first
    assert d.threads.added == [tid] and d.threads.removed == []
    assert d.context is not None and {"fd": fd, "target": "/etc/hostname"} in d.context.opened
    summary = d.summary()
    assert summary.startswith("heap +64."), summary
    assert f"{m.changed_pages} pages changed in [anon {buf:x}]" in summary
    assert "1 thread added" in summary and "1 fd opened: /etc/hostname" in summary
    assert not d.warnings


def test_series_of_three_cores_shows_the_trend(victim: Callable[..., Victim], tmp_path: Path) -> None:
    v = victim(8)
    cores = [tmp_path / f"c{i}.core" for i in range(3)]
    write_core(v.pid, str(cores[0]))
    ask(v, "h 16")
    ask(v, "w 100")
    write_core(v.pid, str(cores[1]))
    ask(v, "h 16")
    ask(v, "t")
    write_core(v.pid, str(cores[2]))
    s = series([{"path": str(c), "id": i + 1} for i, c in enumerate(cores)])
    heap = [r.by_class.get("heap", 0) for r in s.rows]
    assert heap[1] - heap[0] >= 16 * MiB and heap[2] - heap[1] >= 16 * MiB, heap
    assert [r.threads for r in s.rows] == [1, 1, 2]
    assert s.rows[1].changed_pages is not None and s.rows[1].changed_pages >= 100
    assert s.rows[2].threads_added == 1 and not any(r.error for r in s.rows)
    assert "1 thread added" in s.text()


def test_cores_of_two_processes_are_refused(
    victim: Callable[..., Victim], tmp_path: Path, snapd_cmd: list[str]
) -> None:
    v1, v2 = victim(1), victim(1)
    write_core(v1.pid, str(tmp_path / "1.core"))
    write_core(v2.pid, str(tmp_path / "2.core"))
    r = subprocess.run([*snapd_cmd, "diff", str(tmp_path / "1.core"), str(tmp_path / "2.core")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and f"pid {v1.pid} and pid {v2.pid}" in r.stderr, r.stderr


def test_gdb_and_kernel_cores_of_the_same_process(
    victim: Callable[..., Victim], tmp_path: Path, kernel_core_pattern: Path
) -> None:
    """A snapd core, gdb's gcore and the kernel's own core of one process diff with each other,
    at the right offsets (gdb lays segments out its own way): little changed between them."""
    kdir = kernel_core_pattern

    def unlimited_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    v = victim(8, cwd=kdir, preexec_fn=unlimited_core)
    ask(v, "h 4")
    snapd_core, gdb_core = tmp_path / "snapd.core", tmp_path / "gdb.core"
    write_core(v.pid, str(snapd_core))
    r = subprocess.run(
        ["gdb", "-nx", "-batch", "-p", str(v.pid), "-ex", "set debuginfod enabled off",
         "-ex", f"gcore {gdb_core}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gdb_core.exists(), r.stdout + r.stderr
    d = diff_cores(str(snapd_core), str(gdb_core))
    assert d.b.pid == v.pid and d.threads.added == d.threads.removed == []
    assert d.changed_pages < 64, d.summary()  # only what gdb's attach touched, if anything
    assert d.b.exe.endswith(Path(v.proc.args[0]).name) and d.b.producer == "gdb"

    os.kill(v.pid, signal.SIGSEGV)
    v.proc.wait(timeout=120)
    kernel_cores = [p for p in kdir.iterdir() if p.name.startswith("core")]
    assert kernel_cores, f"no kernel core in {kdir}"
    k = str(kernel_cores[0])
    for a, b in ((str(snapd_core), k), (str(gdb_core), k)):
        d = diff_cores(a, b)
        assert d.b.pid == v.pid and d.b.producer == "kernel"
        assert d.changed_pages < 64, d.summary()  # the signal frame on the stack, at most
    with contextlib.suppress(FileNotFoundError):
        os.unlink(k)
