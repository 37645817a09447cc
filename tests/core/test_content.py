"""Content selection: the coreadm classes against a victim with one mapping of each kind."""

from __future__ import annotations

import subprocess

import pytest

from snapd.content import parse_spec
from snapd.core.inspect import read_core
from snapd.errors import ContentError
from support.cores import byte_at, ready_addrs


@pytest.fixture
def content_victim(compile_victim, spawn, tmp_path):
    exe = compile_victim("content")
    v = spawn([exe, tmp_path / "shared.dat"])
    return v, ready_addrs(v.ready_line)


def dump(snapd_cmd, pid, out, spec):
    r = subprocess.run(
        [*snapd_cmd, "gcore", "-c", spec, "-o", str(out), str(pid)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return read_core(f"{out}.{pid}")


def seg_at(core, addr):
    return next(s for s in core.segments if s.start == addr)


@pytest.mark.kernel
def test_default_follows_coredump_filter(content_victim, snapd_cmd, tmp_path):
    v, a = content_victim
    core = dump(snapd_cmd, v.pid, tmp_path / "c", "default")
    path = tmp_path / f"c.{v.pid}"
    # kernel default 0x33: private anon, shared anon (SysV shm, memfd), ELF headers
    for name, ch, cls in (("shm", b"S", "shm"), ("memfd", b"M", "shm"), ("anon", b"A", "anon")):
        s = seg_at(core, a[name])
        assert s.cls == cls and s.filesz == s.end - s.start, (name, s)
        assert byte_at(path, core, a[name] + 100) == ch
    assert seg_at(core, a["file"]).cls == "shfile"
    assert seg_at(core, a["file"]).filesz == 0  # bit 3 (file-backed shared) is off by default
    assert seg_at(core, a["dd"]).filesz == 0  # MADV_DONTDUMP

    # the target's own filter decides `default`: turn on bit 3 and the shared file is in
    with open(f"/proc/{v.pid}/coredump_filter", "w") as f:
        f.write("0x3b")
    core = dump(snapd_cmd, v.pid, tmp_path / "d", "default")
    assert seg_at(core, a["file"]).filesz > 0
    assert byte_at(tmp_path / f"d.{v.pid}", core, a["file"]) == b"F"


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("spec", "dumped", "left_out"),
    [
        ("default-shm", {"anon"}, {"shm", "memfd", "file", "dd"}),
        ("default+shfile", {"anon", "shm", "memfd", "file"}, {"dd"}),
        ("anon", {"anon"}, {"shm", "memfd", "file", "dd"}),
        ("shm+shfile", {"shm", "memfd", "file"}, {"anon", "dd"}),
        ("default+dontdump", {"anon", "shm", "memfd", "dd"}, {"file"}),
        ("all", {"anon", "shm", "memfd", "file", "dd"}, set()),
        ("all-dontdump", {"anon", "shm", "memfd", "file"}, {"dd"}),
        ("none", set(), {"anon", "shm", "memfd", "file", "dd"}),
    ],
)
def test_content_specs(content_victim, snapd_cmd, tmp_path, spec, dumped, left_out):
    v, a = content_victim
    core = dump(snapd_cmd, v.pid, tmp_path / "c", spec)
    for name in dumped:
        assert seg_at(core, a[name]).filesz > 0, (spec, name)
    for name in left_out:
        assert seg_at(core, a[name]).filesz == 0, (spec, name)


@pytest.mark.kernel
def test_elfhdr_gives_first_page_of_elf_files(content_victim, snapd_cmd, tmp_path):
    v, _ = content_victim
    core = dump(snapd_cmd, v.pid, tmp_path / "c", "elfhdr")
    libc = [s for s in core.segments if s.file.endswith("libc.so.6")]
    assert libc[0].filesz == 4096
    assert all(s.filesz == 0 for s in libc[1:])
    assert byte_at(tmp_path / f"c.{v.pid}", core, libc[0].start) == b"\x7f"


@pytest.mark.kernel
def test_unknown_class_is_a_clear_error(content_victim, snapd_cmd, tmp_path):
    v, _ = content_victim
    r = subprocess.run(
        [*snapd_cmd, "gcore", "-c", "default+bogus", "-o", str(tmp_path / "c"), str(v.pid)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.startswith(
        "snapd gcore: content 'default+bogus': unknown class 'bogus'; valid: default, all"
    )
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.glob("c*"))


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("default", (("+", "default"),)),
        ("default-shm", (("+", "default"), ("-", "shm"))),
        ("anon+elfhdr", (("+", "anon"), ("+", "elfhdr"))),
        (" ALL-dontdump ", (("+", "all"), ("-", "dontdump"))),
    ],
)
def test_parse_spec(text, terms):
    assert parse_spec(text).terms == terms


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("", "empty"),
        ("anon,heap", "unexpected ',heap'"),
        ("anonheap", "unknown class 'anonheap'"),
        ("anon++heap", "unexpected '++heap'"),
        ("-", "unexpected '-'"),
    ],
)
def test_parse_spec_errors(text, msg):
    with pytest.raises(ContentError, match=msg.replace("+", r"\+")):
        parse_spec(text)
