"""diff_cores(), series() and `snapd diff` on synthetic cores (no root)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from snapd.diff import BadCore, DifferentProcesses, diff_cores, series
from snapd.diff.corefile import open_core
from snapd.diff.render import text
from snapd.errors import SnapdError
from support.synthcore import EXE, PAGE, SLoad, page, standard, write_core


def core(tmp_path: Path, name: str, loads: list[SLoad] | None = None, **kw: object) -> str:
    return str(write_core(tmp_path / name, loads if loads is not None else standard(), **kw))  # type: ignore[arg-type]


def by_start(d: object, start: int) -> dict[str, object]:
    maps = d.to_dict()["mappings"]  # type: ignore[attr-defined]
    return next(m for m in maps if m["start"] == start)


def test_reads_what_the_writer_writes(tmp_path: Path) -> None:
    img, fd = open_core(core(tmp_path, "a", tids=(4242, 4243), sps=(0x7FFF00007000, 0)))
    os.close(fd)
    assert (img.pid, img.comm, img.exe, img.tids, img.start_time) == (4242, "synth", EXE, [4242, 4243], 777)
    assert [ld.cls for ld in img.loads] == ["text", "data", "heap", "anon", "stack"]
    assert img.loads[0].file == EXE and img.loads[3].file == ""
    assert img.time == 1_700_000_000.0 and img.time_source == "snapd"


def test_cores_without_snapds_note_are_classified_from_the_notes(tmp_path: Path) -> None:
    img, fd = open_core(core(tmp_path, "k", snapd=False, sps=(0x7FFF00007000,)))
    os.close(fd)
    assert [ld.cls for ld in img.loads] == ["text", "data", "anon", "anon", "stack"]
    assert img.start_time is None and img.time_source == "mtime"


def test_statuses_classes_pages_threads(tmp_path: Path) -> None:
    a = core(tmp_path, "a")
    loads = standard()
    buf = loads[3]
    buf.data[5] = page(0x99)  # rewritten
    buf.data[6] = bytes(PAGE)  # rewritten with zeros: differs from its pattern
    loads[2] = SLoad(0x1000000, 8, {0: page(1), 1: page(2), 5: page(3)}, cls="heap")  # grown at its end
    loads[4] = SLoad(0x7FFF00000000, 4, cls="stack")  # shrunk (its one data page was at the end)
    loads.append(SLoad(0x7E0000000000, 4, {i: page(7) for i in range(4)}))  # added
    del loads[1]  # .data removed
    b = core(tmp_path, "b", loads, tids=(4242, 4250))
    d = diff_cores(a, b)
    assert by_start(d, 0x7F0000000000)["status"] == "same"
    assert by_start(d, 0x7F0000000000)["changed_pages"] == 2
    assert by_start(d, 0x7F0000000000)["changed_ranges"] == [[0x7F0000005000, 0x7F0000007000]]
    assert by_start(d, 0x1000000)["status"] == "grown"
    assert by_start(d, 0x7FFF00000000)["status"] == "shrunk"
    assert by_start(d, 0x7E0000000000)["status"] == "added"
    assert by_start(d, 0x402000)["status"] == "removed"
    assert d.changed_pages == 2
    assert d.threads.added == [4250] and d.threads.removed == []
    cls = d.to_dict()["summary"]["by_class"]
    assert cls["heap"] == {"a": 2 * PAGE, "b": 3 * PAGE, "delta": PAGE}
    assert cls["anon"]["delta"] == 4 * PAGE
    assert cls["data"] == {"a": PAGE, "b": 0, "delta": -PAGE}
    assert d.resident_delta == (1 + 4 - 1 - 1) * PAGE  # heap, added, .data, stack
    assert d.summary().startswith(
        "anon +16.0 KiB; heap +4.0 KiB; data -4.0 KiB; 2 pages changed in [anon 7f0000000000]"
    )
    assert "1 thread added" in d.summary()


def test_json_shape(tmp_path: Path) -> None:
    a = core(tmp_path, "a")
    b = core(tmp_path, "b", tids=(4242, 4243))
    out = json.loads(json.dumps(diff_cores(a, b).to_dict()))
    assert {"path", "pid", "time"} <= out["a"].keys() and out["b"]["path"] == b
    assert {"resident_delta", "changed_pages", "by_class"} <= out["summary"].keys()
    assert {"added", "removed", "changed"} <= out["threads"].keys()
    assert out["fds"] == {"opened": [], "closed": []}
    for m in out["mappings"]:
        assert {
            "start",
            "end",
            "class",
            "file",
            "status",
            "resident_a",
            "resident_b",
            "changed_pages",
        } <= m.keys()


def test_a_mapping_grown_downwards_is_matched_by_its_end(tmp_path: Path) -> None:
    """A new mmap merged below an existing one keeps the old end (mm/vma.c)."""
    a = core(tmp_path, "a")
    loads = standard()
    old = loads[3]
    loads[3] = SLoad(
        old.start - 4 * PAGE, old.pages + 4, {i + 4: v for i, v in old.data.items()} | {0: page(9)}
    )
    d = diff_cores(a, core(tmp_path, "b", loads))
    m = by_start(d, old.start - 4 * PAGE)
    assert (m["status"], m["start_a"], m["changed_pages"]) == ("grown", old.start, 0)


def test_top_limits_the_mappings_listed(tmp_path: Path) -> None:
    a = core(tmp_path, "a")
    loads = standard()
    for i in range(10):
        loads.append(SLoad(0x7D0000000000 + i * 0x100000, 1, {0: page(i + 1)}))
    d = diff_cores(a, core(tmp_path, "b", loads), top=3)
    assert len(d.mappings) == 3 and d.mappings_changed == 10
    assert len(diff_cores(a, core(tmp_path, "b", loads), top=0).mappings) == 10


def test_a_mapping_left_out_of_one_core_is_not_compared(tmp_path: Path) -> None:
    a = core(tmp_path, "a")
    loads = standard()
    loads[3] = SLoad(loads[3].start, 16, dumped=False)
    m = by_start(diff_cores(a, core(tmp_path, "b", loads)), loads[3].start)
    assert (m["changed_pages"], m["compared_bytes"], m["resident_b"]) == (0, 0, 0)


def test_reports_give_the_threads_that_moved(tmp_path: Path) -> None:
    a = core(tmp_path, "a", tids=(1, 2, 3))
    b = core(tmp_path, "b", tids=(1, 2, 3))
    rep_a = {"threads": [{"tid": 1, "frames": [{"function": "epoll_wait"}, {"function": "main"}]},
                         {"tid": 2, "frames": [{"function": "read"}, {"function": "worker"}]}]}  # fmt: skip
    rep_b = {"threads": [{"tid": 1, "frames": [{"function": "epoll_wait"}, {"function": "main"}]},
                         {"tid": 2, "frames": [{"function": "write"}, {"function": "worker"}]}]}  # fmt: skip
    d = diff_cores(a, b, reports=(rep_a, rep_b))
    assert d.threads.changed == [2] and d.threads.compared_stacks
    assert diff_cores(a, b, reports=(rep_a, {"threads": "garbage"})).threads.compared_stacks is False


@pytest.mark.parametrize(
    ("kw_b", "why"),
    [
        ({"pid": 4243, "tids": (4243,)}, "pid 4242 and pid 4243"),
        ({"start_time": 778}, "pid 4242 was reused"),
        ({"snapd": False, "exe": "/usr/bin/other"}, "runs"),
    ],
)
def test_different_processes_are_refused(tmp_path: Path, kw_b: dict[str, object], why: str) -> None:
    a = core(tmp_path, "a")
    loads = standard()
    if "exe" in kw_b:
        loads[0].path = loads[1].path = str(kw_b["exe"])
    b = core(tmp_path, "b", loads, **kw_b)
    with pytest.raises(DifferentProcesses) as e:
        diff_cores(a, b)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_pid_and_exe_suffice_without_start_times(tmp_path: Path) -> None:
    """A kernel core (no snapd note) and a snapd core of one process diff."""
    d = diff_cores(core(tmp_path, "a"), core(tmp_path, "k", snapd=False))
    assert (d.a.producer, d.b.producer) == ("snapd", "kernel")


def test_not_cores(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("hello\n")
    (tmp_path / "empty").write_bytes(b"")
    cases = {
        str(tmp_path / "text"): "not an ELF file",
        str(tmp_path / "empty"): "not an ELF file",
        str(tmp_path): "not a regular file",
        str(tmp_path / "missing"): "cannot open",
        shutil.which("true") or "/bin/true": "not a core file",
    }
    good = core(tmp_path, "a")
    for path, why in cases.items():
        with pytest.raises(BadCore) as e:
            diff_cores(path, good)
        assert why in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_truncated_core_is_diffed_as_far_as_it_goes(tmp_path: Path) -> None:
    a = core(tmp_path, "a")
    b = core(tmp_path, "b")
    size = os.path.getsize(b)
    os.truncate(b, size - 10 * PAGE)
    d = diff_cores(a, b)
    assert d.b.truncated and any("truncated" in w for w in d.warnings)
    os.truncate(b, 200)  # inside the notes
    with pytest.raises(BadCore):
        diff_cores(a, b)


def test_garbage_never_raises_anything_but_badcore(tmp_path: Path) -> None:
    """Random byte flips in the headers and notes: a diff or one BadCore, nothing else."""
    good = Path(core(tmp_path, "a"))
    raw = bytearray(good.read_bytes())
    head = 0x800  # ELF header, program headers and notes
    rng = random.Random(1)
    bad = tmp_path / "bad"
    for _ in range(300):
        mutated = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(head)] = rng.randrange(256)
        bad.write_bytes(bytes(mutated))
        try:
            diff_cores(str(good), str(bad))
        except (BadCore, DifferentProcesses) as err:
            assert "\n" not in str(err)


def test_huge_counts_in_headers_are_bounded(tmp_path: Path) -> None:
    """A note claiming a 4 GiB descriptor, a program header count of 2^32: refused at once."""
    good = Path(core(tmp_path, "a"))
    raw = bytearray(good.read_bytes())
    notes_off = int.from_bytes(raw[64 + 8 : 64 + 16], "little")
    raw[notes_off + 4 : notes_off + 8] = (0xFFFFFFF0).to_bytes(4, "little")  # first note's descsz
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BadCore, match="runs past its segment"):
        diff_cores(str(good), str(bad))


def test_render_starts_with_the_sides_and_the_summary(tmp_path: Path) -> None:
    d = diff_cores(core(tmp_path, "a"), core(tmp_path, "b", tids=(4242, 4243)))
    lines = text(d).splitlines()
    assert lines[0].startswith("core A: ") and lines[1].startswith("core B: ")
    assert lines[2] == "summary: 1 thread added"


def test_series_trend(tmp_path: Path) -> None:
    cores = []
    for i in range(3):
        loads = standard()
        loads[2] = SLoad(0x1000000, 4 + 4 * i, {j: page(j + 1) for j in range(2 + 4 * i)}, cls="heap")
        cores.append(core(tmp_path, f"c{i}", loads, tids=tuple(range(4242, 4243 + i))))
    s = series([cores[0], {"path": cores[1], "id": 7}, cores[2]])
    heap = [r.by_class["heap"] for r in s.rows]
    assert heap == [2 * PAGE, 6 * PAGE, 10 * PAGE]
    assert [r.resident_delta for r in s.rows] == [None, 4 * PAGE, 4 * PAGE]
    assert [r.threads for r in s.rows] == [1, 2, 3]
    assert s.rows[1].label == "7"
    assert "heap" in s.text().splitlines()[0]
    json.dumps(s.to_dict())


def test_series_records_a_break_and_goes_on(tmp_path: Path) -> None:
    a = core(tmp_path, "a")
    other = core(tmp_path, "o", pid=99, tids=(99,))
    s = series([a, other, other])
    assert "different processes" in s.rows[1].error and not s.rows[2].error


def test_cli_one_line_errors_and_json(tmp_path: Path, snapd_cmd: list[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a core\n")
    a = core(tmp_path, "a")
    other = core(tmp_path, "o", pid=99, tids=(99,))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*snapd_cmd, "diff", *args], capture_output=True, text=True, timeout=60)

    for args, why in (
        ((a, str(tmp_path / "notes.txt")), "not an ELF file"),
        ((a, other), "different processes"),
    ):
        r = run(*args)
        assert r.returncode == 1 and r.stdout == ""
        assert len(r.stderr.splitlines()) == 1 and why in r.stderr, r.stderr
        assert r.stderr.startswith("snapd diff: ")
    r = run("--json", a, core(tmp_path, "b"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["summary"]["text"] == "no change"
    r = run("--series", a, core(tmp_path, "b"), core(tmp_path, "c"))
    assert r.returncode == 0 and "no change" in r.stdout, r.stderr


def test_contexts_must_be_of_the_cores_process(tmp_path: Path) -> None:
    a, b = core(tmp_path, "a"), core(tmp_path, "b")
    with pytest.raises(DifferentProcesses, match="context A"):
        diff_cores(a, b, context=({"pid": 1}, {"pid": 4242}))
    d = diff_cores(
        a, b, context=({"pid": 4242, "fds": []}, {"pid": 4242, "fds": [{"fd": 3, "target": "/x"}]})
    )
    assert d.summary() == "1 fd opened: /x"


def test_pn_xnum_segment_count_from_section_header_0(tmp_path: Path) -> None:
    """More than 65534 mappings: e_phnum is PN_XNUM and section header 0 holds the count
    (fs/binfmt_elf.c fill_extnum_info); the same escape on a small core reads the same."""
    from snapd.core import elf

    path = Path(core(tmp_path, "a"))
    raw = path.read_bytes()
    phnum = int.from_bytes(raw[56:58], "little")
    shoff = len(raw)
    path.write_bytes(elf.ehdr(elf.PN_XNUM, shoff) + raw[elf.EHDR_SIZE :] + elf.xnum_shdr(phnum))
    img, fd = open_core(str(path))
    os.close(fd)
    assert len(img.loads) == phnum - 1 and img.pid == 4242


def test_compressed_cores_are_unpacked(tmp_path: Path) -> None:
    """Ours (.zst in the ship container) and a plain zstd file of a core (systemd-coredump's)."""
    import zstandard

    from snapd.ship.compress import compress_core

    a = core(tmp_path, "a")
    loads = standard()
    loads[3].data[2] = page(0x77)
    b = core(tmp_path, "b", loads)
    ours = compress_core(b).path
    plain_zst = tmp_path / "b.plain.zst"
    plain_zst.write_bytes(zstandard.ZstdCompressor().compress(Path(b).read_bytes()))
    for packed in (ours, str(plain_zst)):
        d = diff_cores(a, packed)
        assert d.b.path == packed and d.changed_pages == 1
    (tmp_path / "cut.zst").write_bytes(plain_zst.read_bytes()[:40])
    with pytest.raises(SnapdError) as e:
        diff_cores(a, str(tmp_path / "cut.zst"))
    assert "\n" not in str(e.value)
