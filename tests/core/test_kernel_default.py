"""`default` content decides as the kernel does: snapd's core of a process and the kernel's own
core of the same process (kill -ABRT, core_pattern pointed at a test directory) hold the same
segments, each with the same p_filesz, for several coredump_filters, on a Python victim with one
mapping of each kind, on our C victims and on a JVM (openjdk-17: its lib/modules is r--s)."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd import procfs
from snapd.core import write_core
from support.victims import Victim
from support.waiting import wait_for

pytestmark = pytest.mark.kernel

# One mapping of each kind the filter tells apart, then wait on stdin.
MAPPINGS = r"""
import mmap, os, resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
with open(f"/proc/self/coredump_filter", "w") as f:
    f.write(sys.argv[1])
d = sys.argv[2]
data = os.path.join(d, "data.bin")              # not executable, not ELF (like lib/modules)
with open(data, "wb") as f:
    f.write(b"JIMAGE" + bytes(65530))
keep = []
def mapfile(path, flags, prot, mode=os.O_RDONLY, length=0):
    fd = os.open(path, mode)
    keep.append(mmap.mmap(fd, length, flags=flags, prot=prot))
    os.close(fd)
mapfile(data, mmap.MAP_SHARED, mmap.PROT_READ)          # r--s: VM_MAYSHARE only, private to the filter
mapfile("/usr/bin/true", mmap.MAP_SHARED, mmap.PROT_READ)  # r--s of an executable ELF file
mapfile(data, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, os.O_RDWR)  # rw-s: VM_SHARED
mapfile(data, mmap.MAP_PRIVATE, mmap.PROT_READ)          # r--p file, never written
w = mmap.mmap(os.open(data, os.O_RDONLY), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
w[0:4] = b"COW!"                                          # rw-p file with an anonymous page
keep.append(w)
keep.append(mmap.mmap(-1, 1 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS))  # shared anonymous
untouched = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # no anon_vma
touched = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
touched[4096] = 1
keep += [untouched, touched]
keep.append(mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0))  # PROT_NONE
print("ready", flush=True)
sys.stdin.readline()
"""


def segments(path: Path) -> dict[int, tuple[int, int]]:
    """vaddr -> (p_filesz, p_memsz) of every PT_LOAD."""
    with open(path, "rb") as f:
        eh = f.read(64)
        (phoff,) = struct.unpack_from("<Q", eh, 32)
        phentsize, phnum = struct.unpack_from("<HH", eh, 54)
        f.seek(phoff)
        raw = f.read(phentsize * phnum)
    out = {}
    for i in range(phnum):
        p_type, _fl, _off, vaddr, _pa, filesz, memsz, _al = struct.unpack_from(
            "<IIQQQQQQ", raw, i * phentsize
        )
        if p_type == 1:
            out[vaddr] = (filesz, memsz)
    return out


def _dead(pid: int) -> bool:
    """Exited (a zombie until its parent reaps it): the kernel has written its core."""
    try:
        return procfs.stat(pid).state in ("Z", "X")
    except Exception:
        return True


def compare_with_the_kernel(pid: int, kdir: Path, out: Path) -> list[str]:
    """snapd's default core of ``pid``, then the kernel's (the process dies): the segments
    that differ, described with their mapping."""
    maps = {m.start: m for m in procfs.smaps(pid)}
    write_core(pid, str(out), content="default", sync=False)
    os.kill(pid, signal.SIGABRT)
    kcore = kdir / f"core.{pid}"
    wait_for(lambda: kcore.exists() and _dead(pid), 120, "the kernel's core")
    ours, theirs = segments(out), segments(kcore)
    diffs = []
    for vaddr in sorted(set(ours) | set(theirs)):
        if ours.get(vaddr) != theirs.get(vaddr):
            m = maps.get(vaddr)
            what = f"{m.perms} {' '.join(sorted(m.vmflags))} {m.path!r}" if m else "?"
            diffs.append(f"{vaddr:#x}: snapd {ours.get(vaddr)}, kernel {theirs.get(vaddr)}: {what}")
    return diffs


@pytest.mark.parametrize("filt", ["0x33", "0x3b", "0x37", "0x3f", "0x23"])
def test_default_is_the_kernels_choice_for_every_mapping_kind(
    spawn: Callable[..., Victim], tmp_path: Path, kernel_core_pattern: Path, filt: str
) -> None:
    v = spawn([sys.executable, "-c", MAPPINGS, filt, str(tmp_path)])
    diffs = compare_with_the_kernel(v.pid, kernel_core_pattern, tmp_path / "snapd.core")
    assert diffs == [], "\n".join(diffs)


@pytest.mark.parametrize("victim", ["content", "threads", "bigmem"])
def test_default_is_the_kernels_choice_on_our_victims(
    spawn: Callable[..., Victim],
    compile_victim: Callable[..., Path],
    tmp_path: Path,
    kernel_core_pattern: Path,
    victim: str,
) -> None:
    args = {"content": [tmp_path / "shared.dat"], "bigmem": ["64", "32"], "threads": []}[victim]
    v = spawn(["prlimit", "--core=unlimited", compile_victim(victim), *args])
    diffs = compare_with_the_kernel(v.pid, kernel_core_pattern, tmp_path / "snapd.core")
    assert diffs == [], "\n".join(diffs)


def test_default_is_the_kernels_choice_on_a_jvm(
    spawn: Callable[..., Victim], tmp_path: Path, kernel_core_pattern: Path
) -> None:
    java = shutil.which("java")
    javac = shutil.which("javac")
    if not java or not javac:
        pytest.skip("no JDK (openjdk-17-jdk-headless)")
    src = tmp_path / "Idle.java"
    src.write_text(
        "public class Idle { public static void main(String[] a) throws Exception {"
        ' System.out.println("ready"); System.out.flush(); System.in.read(); } }\n'
    )
    subprocess.run([javac, "-d", str(tmp_path), str(src)], check=True, timeout=120)
    # An idle JVM still runs (JIT, GC, safepoint polls), and between the two cores it may give
    # a mapping its first anonymous page, which changes the kernel's choice for it (anon_vma,
    # fs/coredump.c vma_dump_size): seen once in a run with one CPU kept busy. A difference is
    # a failure only if a second JVM shows it too.
    first: list[str] = []
    for attempt in range(2):
        v = spawn(["prlimit", "--core=unlimited", java, "-Xmx256m", "-cp", str(tmp_path), "Idle"])
        maps = procfs.smaps(v.pid)
        modules = [m for m in maps if m.path.endswith("/lib/modules")]
        assert modules and modules[0].perms == "r--s" and "sh" not in modules[0].vmflags, modules
        diffs = compare_with_the_kernel(v.pid, kernel_core_pattern, tmp_path / f"snapd.core.{attempt}")
        if not diffs:
            if first:
                print("\nthe first JVM changed between the two cores:\n" + "\n".join(first))
            return
        first = first or diffs
    assert diffs == [], "\n".join(diffs)
