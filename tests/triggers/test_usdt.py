"""USDT notes (snapd.probe.usdt) against readelf -n on real binaries: CPython 3.11, PostgreSQL
15, HotSpot's libjvm; every operand they use compiles to a fixed-shape descriptor."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from snapd.probe import symbols, usdt
from snapd.probe.symbols import ResolveError, resolve_binary
from snapd.probe.usdt import ArgKind, parse_arg

PYTHON = "/usr/bin/python3.11"
POSTGRES = "/usr/lib/postgresql/15/bin/postgres"
JVMS = (
    "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so",
    "/usr/lib/jvm/temurin-25-jdk-amd64/lib/server/libjvm.so",
)
NOTE = re.compile(
    r"Provider: (\S+)\s+Name: (\S+)\s+Location: (0x[0-9a-f]+), Base: (0x[0-9a-f]+), "
    r"Semaphore: (0x[0-9a-f]+)\s+Arguments:[ \t]*([^\n]*)"
)


def readelf_notes(path: str) -> list[tuple[str, str, int, int, str]]:
    out = subprocess.run(["readelf", "-nW", path], capture_output=True, text=True, check=True).stdout
    return [(m[1], m[2], int(m[3], 16), int(m[5], 16), m[6].strip()) for m in NOTE.finditer(out)]


def present(paths: tuple[str, ...]) -> list[str]:
    return [p for p in paths if Path(p).exists()]


@pytest.mark.parametrize("path", [PYTHON, POSTGRES, *JVMS])
def test_sites_agree_with_readelf(path: str) -> None:
    if not Path(path).exists():
        pytest.skip(f"{path} is not installed")
    want = readelf_notes(path)
    got = [
        (s.provider, s.name, s.pc, s.semaphore, s.args_text) for s in usdt.read_sites(resolve_binary(path))
    ]
    assert got == want and len(got) > 0
    # every operand these real programs use is compiled (none left to a refusal)
    bad = [
        (s.full_name, a.text, a.why)
        for s in usdt.read_sites(resolve_binary(path))
        for a in s.args
        if a.kind is ArgKind.NONE
    ]
    assert bad == []


def test_known_counts() -> None:
    """The numbers the issue quotes, as readelf counts them on Debian 12."""
    assert len(usdt.read_sites(resolve_binary(PYTHON))) == len(readelf_notes(PYTHON)) >= 8
    if Path(POSTGRES).exists():
        assert len(usdt.read_sites(resolve_binary(POSTGRES))) >= 70


def test_python_function_entry() -> None:
    sites = usdt.find(resolve_binary(PYTHON), "python:function__entry")
    assert len(sites) == 1
    s = sites[0]
    assert s.semaphore != 0 and s.semaphore_offset != 0
    # the semaphore is a u16 in .probes, and its file offset is where the kernel's reference
    # counter goes (uprobe ref_ctr_offset): inside that section's file bytes
    with open(PYTHON, "rb") as f:
        probes = ELFFile(f).get_section_by_name(".probes")
        assert probes["sh_addr"] <= s.semaphore < probes["sh_addr"] + probes["sh_size"]
        assert s.semaphore_offset - probes["sh_offset"] == s.semaphore - probes["sh_addr"]
    # filename (char *), function name (char *), line number (int)
    assert [(a.kind, a.size, a.signed) for a in s.args] == [
        (ArgKind.REG, 8, False),
        (ArgKind.REG, 8, False),
        (ArgKind.REG, 4, True),
    ]


def test_postgres_rip_relative_operands() -> None:
    if not Path(POSTGRES).exists():
        pytest.skip("postgres 15 is not installed")
    b = resolve_binary(POSTGRES)
    sites = [s for s in usdt.read_sites(b) for a in s.args if a.kind is ArgKind.IPREL]
    assert sites, "postgres 15 has sym(%rip) operands (NBuffers, CheckpointStats)"
    for s in sites:
        for a in s.args:
            if a.kind is ArgKind.IPREL:
                sym = re.match(r"-?\d+@(?:(\d+)\+)?([A-Za-z_]\w*)\(%rip\)", a.text)
                assert sym, a.text
                value = symbols.lookup(b, sym[2])[0].value + int(sym[1] or 0)
                assert s.pc + a.disp == value  # the runtime pc plus disp is the variable


@pytest.mark.parametrize(
    "text,want",
    [
        ("-4@%eax", (ArgKind.REG, 4, True, 80, 0, 0, 0)),
        ("8@%rbp", (ArgKind.REG, 8, False, 32, 0, 0, 0)),
        ("-8@%r12", (ArgKind.REG, 8, True, 24, 0, 0, 0)),
        ("1@%r13b", (ArgKind.REG, 1, False, 16, 0, 0, 0)),
        ("2@%r13w", (ArgKind.REG, 2, False, 16, 0, 0, 0)),
        ("-4@%r14d", (ArgKind.REG, 4, True, 8, 0, 0, 0)),
        ("1@%sil", (ArgKind.REG, 1, False, 104, 0, 0, 0)),
        ("2@%cx", (ArgKind.REG, 2, False, 88, 0, 0, 0)),
        ("-4@$5", (ArgKind.CONST, 4, True, 0, 0, 0, 5)),
        ("8@$-1", (ArgKind.CONST, 8, False, 0, 0, 0, -1)),
        ("8@-16(%rbp)", (ArgKind.MEM, 8, False, 32, 0, 0, -16)),
        ("-4@112(%rsp)", (ArgKind.MEM, 4, True, 152, 0, 0, 112)),
        ("4@(%rdi)", (ArgKind.MEM, 4, False, 112, 0, 0, 0)),
        ("8@8(%rax,%rbx,4)", (ArgKind.MEM, 8, False, 80, 40, 4, 8)),
        ("8@0x10(%rax,%rcx)", (ArgKind.MEM, 8, False, 80, 88, 1, 16)),
        ("%rdi", (ArgKind.REG, 8, False, 112, 0, 0, 0)),  # old notes: no size
    ],
)
def test_operand_forms(text: str, want: tuple[int, ...]) -> None:
    a = parse_arg(text)
    assert (a.kind, a.size, a.signed, a.reg, a.index, a.scale, a.disp) == want


def test_rip_relative_needs_the_symbol() -> None:
    pc = 0x1000
    a = parse_arg("-4@52+CheckpointStats(%rip)", pc, {"CheckpointStats": 0x5000}.get)
    assert (a.kind, a.disp, a.size, a.signed) == (ArgKind.IPREL, 0x5000 + 52 - pc, 4, True)
    assert parse_arg("8@NBuffers(%rip)", pc, {}.get).kind is ArgKind.NONE


@pytest.mark.parametrize(
    "text,why",
    [
        ("8@%xmm0", "not a general-purpose"),
        ("1@%ah", "not a general-purpose"),
        ("3@%eax", "size 3"),
        ("8@(%eax)", "64-bit"),
        ("8@16(%rip)", "names no symbol"),
        ("8@$x", "not a number"),
        ("8@foo", "not in a form"),
        ("8@12", "not in a form"),
    ],
)
def test_uncompilable_operands_say_why(text: str, why: str) -> None:
    a = parse_arg(text)
    assert a.kind is ArgKind.NONE and why in a.why


def test_descriptor_shape_is_fixed() -> None:
    s = usdt.find(resolve_binary(PYTHON), "python:function__entry")[0]
    raw = usdt.pack(s.args)
    assert len(raw) == usdt.ARG_STRUCT.size * usdt.MAX_ARGS == 16 * 12
    assert struct.unpack_from("<BBBBHHq", raw, 32)[:3] == (ArgKind.REG, 4, 1)
    assert raw[48:] == bytes(len(raw) - 48)  # unused slots: kind NONE


def test_unknown_probe_errors(tmp_path: Path) -> None:
    py = resolve_binary(PYTHON)
    with pytest.raises(ResolveError, match="did you mean 'python:function__entry'") as ei:
        usdt.find(py, "python:function_entry")
    assert ei.value.key == "probe"
    for bad in ("function__entry", "py thon:x", ":x", "a:", "a:b:c", "p:\x01"):
        with pytest.raises(ResolveError, match="provider:name"):
            usdt.find(py, bad)
    with pytest.raises(ResolveError, match="has no USDT probes"):
        usdt.find(resolve_binary("/usr/lib/x86_64-linux-gnu/libc.so.6"), "libc:setjmp")
    assert usdt.uncompiled(usdt.find(py, "python:function__entry"), 4) is not None  # only 3 args
    assert usdt.uncompiled(usdt.find(py, "python:function__entry"), 3) is None


def test_prelinked_base_moves_the_sites(tmp_path: Path) -> None:
    """prelink moves .stapsdt.base but leaves the notes: pc and semaphore follow the section."""
    copy = tmp_path / "python3.11-prelinked"
    shutil.copy(PYTHON, copy)
    with open(copy, "r+b") as f:
        elf = ELFFile(f)
        idx = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".stapsdt.base")
        shdr = elf["e_shoff"] + idx * elf["e_shentsize"]
        f.seek(shdr + 16)  # Elf64_Shdr.sh_addr
        (addr,) = struct.unpack("<Q", f.read(8))
        f.seek(shdr + 16)
        f.write(struct.pack("<Q", addr - 0x1000))
    orig = {s.name: s for s in usdt.read_sites(resolve_binary(PYTHON))}
    moved = {s.name: s for s in usdt.read_sites(resolve_binary(str(copy)))}
    for name, s in orig.items():
        assert moved[name].pc == s.pc - 0x1000 and moved[name].semaphore == s.semaphore - 0x1000


def test_hostile_notes_are_bounded(tmp_path: Path) -> None:
    """A copy of python3.11 whose notes are garbage: an error or fewer sites, never a crash."""
    data = bytearray(Path(PYTHON).read_bytes())
    with open(PYTHON, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".note.stapsdt")
        off, size = sec["sh_offset"], sec["sh_size"]
    for i, fill in enumerate((b"\xff", b"\x00", bytes(range(256)))):
        data[off : off + size] = (fill * size)[:size]
        p = tmp_path / f"py-{i}"
        p.write_bytes(data)
        try:
            sites = usdt.read_sites(resolve_binary(str(p)))
        except ResolveError:
            continue
        assert all(usdt.PROBE_NAME_RE.fullmatch(s.name) for s in sites)
