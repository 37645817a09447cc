"""Symbol resolution (snapd.probe.symbols) against binutils (nm, readelf) on real binaries, in
real target processes: PIE and non-PIE executables, shared objects, a file deleted after it
was mapped, a container's file that the host does not have."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.probe import symbols
from snapd.probe.symbols import ResolveError, function_site, resolve_binary
from support.victims import Victim

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
PYTHON = "/usr/bin/python3.11"


def nm_value(path: str, name: str, dynamic: bool = True) -> int:
    out = subprocess.run(
        ["nm", *(["-D"] if dynamic else []), path], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].split("@")[0] == name and parts[1] in "TtWi":
            return int(parts[0], 16)
    raise AssertionError(f"nm: no {name} in {path}")


def readelf_offset(path: str, vaddr: int) -> int:
    """File offset of vaddr from readelf's PT_LOAD lines."""
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True, check=True).stdout
    for m in re.finditer(r"LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+\S+\s+(0x[0-9a-f]+)", out):
        off, va, filesz = (int(x, 16) for x in m.groups())
        if va <= vaddr < va + filesz:
            return vaddr - va + off
    raise AssertionError(f"{vaddr:#x} in no PT_LOAD of {path}")


@pytest.mark.parametrize(
    "path,name", [(LIBC, "malloc"), (LIBC, "free"), (PYTHON, "PyObject_Malloc"), (PYTHON, "PyEval_EvalCode")]
)
def test_offsets_agree_with_binutils(path: str, name: str) -> None:
    site = function_site(resolve_binary(path), name)
    v = nm_value(path, name)
    assert site.vaddr == v and site.offset == readelf_offset(path, v)


def test_library_name_on_the_host() -> None:
    b = resolve_binary("libc.so.6")
    assert os.path.samefile(b.path, LIBC)
    assert os.path.samefile(resolve_binary("libc.so").path, LIBC)  # a soname prefix


@pytest.mark.kernel
def test_pie_victim_and_its_libc(compile_victim: Callable[..., Path], spawn: Callable[..., Victim]) -> None:
    exe = compile_victim("trg_victim")
    v = spawn([exe])
    b = resolve_binary(str(exe), v.pid)
    assert b.path.startswith(f"/proc/{v.pid}/map_files/") and b.shown == str(exe)
    site = function_site(b, "trg_marker")
    v_nm = nm_value(str(exe), "trg_marker", dynamic=False)
    assert site.offset == readelf_offset(str(exe), v_nm)
    # the address the victim prints is its load address plus the link-time address
    assert b.start is not None and b.start + site.vaddr == int(v.ready_line.split("marker=")[1], 16)
    libc = resolve_binary("libc.so.6", v.pid)
    assert os.path.samefile(libc.path, LIBC) and libc.key == resolve_binary(LIBC).key
    assert function_site(libc, "malloc").offset == function_site(resolve_binary(LIBC), "malloc").offset
    with pytest.raises(ResolveError, match=r"maps no library 'libssl\.so\.3'") as ei:
        resolve_binary("libssl.so.3", v.pid)
    assert ei.value.key == "binary" and ei.value.pid == v.pid


@pytest.mark.kernel
def test_file_deleted_after_it_was_mapped(
    compile_victim: Callable[..., Path], spawn: Callable[..., Victim], tmp_path: Path
) -> None:
    exe = tmp_path / "trg_victim_gone"
    shutil.copy(compile_victim("trg_victim"), exe)
    v = spawn([exe])
    exe.unlink()
    b = resolve_binary(str(exe), v.pid)
    assert function_site(b, "trg_marker").offset > 0
    with pytest.raises(ResolveError, match="no such file"):
        resolve_binary(str(exe))


@pytest.mark.kernel
def test_container_file_the_host_does_not_have(compile_victim: Callable[..., Path], tmp_path: Path) -> None:
    """A process in its own mount namespace runs /mnt/x/trg_victim_ns, which exists only there."""
    real = tmp_path / "real"
    real.mkdir()
    shutil.copy(compile_victim("trg_victim"), real / "trg_victim_ns")
    ghost = tmp_path / "ghost"
    ghost.mkdir()
    script = f"mount --bind {real} {ghost} && exec {ghost}/trg_victim_ns"
    v = Victim(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    try:
        assert not (ghost / "trg_victim_ns").exists()  # not on the host
        b = resolve_binary(str(ghost / "trg_victim_ns"), v.pid)
        assert b.key.ino == os.stat(real / "trg_victim_ns").st_ino
        assert function_site(b, "trg_marker").offset > 0
    finally:
        v.kill()


def test_errors_are_typed_and_name_their_key(tmp_path: Path) -> None:
    libc = resolve_binary(LIBC)
    cases: list[tuple[Callable[[], object], str, str]] = [
        (lambda: function_site(libc, "mallloc"), "symbol", "did you mean 'malloc'"),
        (lambda: function_site(libc, "strlen"), "symbol", "IFUNC"),
        (lambda: function_site(libc, "environ"), "symbol", "is a variable"),
        (lambda: resolve_binary("bin/ls"), "binary", "absolute path"),
        (lambda: resolve_binary("/nonexistent/trg"), "binary", "no such file"),
        (lambda: resolve_binary("libtrg-none.so.9"), "binary", "no library"),
        (lambda: resolve_binary("/tmp"), "binary", "not a regular file"),
    ]
    text = tmp_path / "not-elf"
    text.write_text("hello\n")
    cases.append((lambda: function_site(resolve_binary(str(text)), "main"), "binary", "not a readable ELF"))
    for fn, key, msg in cases:
        with pytest.raises(ResolveError) as ei:
            fn()
        assert ei.value.key == key and msg in ei.value.msg, (key, str(ei.value))


def test_undefined_import_is_not_the_function(compile_victim: Callable[..., Path]) -> None:
    """trg_victim calls malloc, which its .dynsym lists undefined: the function is in libc."""
    b = resolve_binary(str(compile_victim("trg_victim")))
    with pytest.raises(ResolveError, match="no function 'malloc'"):
        function_site(b, "malloc")


@pytest.mark.slow  # seconds: a miss for each of 255 names in libc
def test_symbol_text_with_every_odd_byte() -> None:
    libc = resolve_binary(LIBC)
    for c in range(1, 256):
        name = "mal" + chr(c) + "loc"
        with pytest.raises(ResolveError) as ei:
            function_site(libc, name)
        assert ei.value.key == "symbol"
        if c < 0x21 or c == 0x7F:
            assert "cannot be part of a symbol name" in ei.value.msg
    for name in ("", "x" * (symbols.SYMBOL_MAX + 1)):
        with pytest.raises(ResolveError):
            function_site(libc, name)


@pytest.mark.parametrize("cut", [64, 4096, 100_000])
def test_corrupt_elf_is_a_resolve_error(tmp_path: Path, cut: int) -> None:
    data = Path(LIBC).read_bytes()
    bad = tmp_path / f"libc-cut-{cut}.so"
    bad.write_bytes(data[:cut])
    with pytest.raises(ResolveError):
        function_site(resolve_binary(str(bad)), "malloc")
    garbage = tmp_path / f"garbage-{cut}"
    garbage.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * (cut // 256 + 1))
    with pytest.raises(ResolveError):
        function_site(resolve_binary(str(garbage)), "malloc")


def test_parsed_once_per_file_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "libc-copy.so.6"
    shutil.copy(LIBC, lib)
    symbols.clear_cache()
    calls = []
    real = symbols._parse
    monkeypatch.setattr(symbols, "_parse", lambda b, f: calls.append(b.path) or real(b, f))
    for _ in range(3):
        function_site(resolve_binary(str(lib)), "malloc")
    assert len(calls) == 1
    t = time.time() + 10
    os.utime(lib, (t, t))  # an upgrade in place changes mtime: parsed again
    function_site(resolve_binary(str(lib)), "malloc")
    assert len(calls) == 2


@pytest.mark.slow  # seconds: libjvm's symbol tables
def test_big_symtab_is_scanned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    jvm = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"
    if not os.path.exists(jvm):
        pytest.skip("no OpenJDK 17 libjvm.so")
    symbols.clear_cache()
    scans = []
    real = symbols._scan
    monkeypatch.setattr(symbols, "_scan", lambda *a: scans.append(1) or real(*a))
    b = resolve_binary(jvm)
    function_site(b, "JVM_GC")  # .dynsym, through .gnu.hash: no scan
    assert scans == []
    name = "_ZN7Threads9create_vmEP14JavaVMInitArgsPb"  # .symtab only
    assert function_site(b, name).vaddr == nm_value(jvm, name, dynamic=False)
    function_site(b, "_ZN7Threads10destroy_vmEv")
    assert len(scans) == 1  # 58k symbols read once for both
