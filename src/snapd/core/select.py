"""Which mappings go into the core, and how much of each.

Each VMA gets one content class (the vocabulary of :mod:`snapd.content`), and the spec decides
NONE / ELFHDR (first page only) / WHOLE. ``default`` reproduces the kernel's own choice for the
target's coredump_filter (fs/coredump.c vma_dump_size, before 6.x in fs/binfmt_elf.c).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from enum import IntEnum, IntFlag

from snapd.content import ContentSpec
from snapd.procfs import Mapping

#: [vvar] and friends are always in a kernel core but can never be read (VM_PFNMAP pages)
UNREADABLE_SPECIAL = frozenset({"[vvar]", "[vvar_vclock]"})
ALWAYS_DUMP = frozenset({"[vdso]", "[vsyscall]", *UNREADABLE_SPECIAL})

TMPFS_MAGIC = 0x01021994


class Amount(IntEnum):
    NONE = 0
    ELFHDR = 1  # one page: the ELF header, so readers can find build-ids
    WHOLE = 2


class Filter(IntFlag):
    """/proc/PID/coredump_filter bits (core(5))."""

    ANON_PRIVATE = 1 << 0
    ANON_SHARED = 1 << 1
    MAPPED_PRIVATE = 1 << 2
    MAPPED_SHARED = 1 << 3
    ELF_HEADERS = 1 << 4
    HUGETLB_PRIVATE = 1 << 5
    HUGETLB_SHARED = 1 << 6
    DAX_PRIVATE = 1 << 7
    DAX_SHARED = 1 << 8


# Tell tmpfs files apart from other shared files: statfs(2) f_type at offset 0 of struct statfs.
# glibc's soname, not ctypes.util.find_library("c"): that runs ldconfig -p, ~12 ms at each start.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _fs_type(path: str) -> int:
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(path.encode(), buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:8], "little", signed=True)


def unlinked_or_shmem(pid: int, m: Mapping) -> bool:
    """Shared memory in the coreadm sense: SysV shm, shared anonymous, memfd, tmpfs files.

    The kernel's own test is ``i_nlink == 0`` (deleted: shm, /dev/zero, memfd); tmpfs files
    that still have a name are shm for us too, found by statfs() on /proc/PID/map_files.
    """
    if m.deleted or m.path.startswith(("/SYSV", "/dev/zero", "/memfd:", "[anon_shmem")):
        return True
    if not m.path.startswith("/"):
        return not m.file_backed
    return _fs_type(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}") == TMPFS_MAGIC


def classify(pid: int, m: Mapping, stack_ptrs: frozenset[int] | set[int]) -> str:
    if m.path in ALWAYS_DUMP:
        return "vdso"
    if "ht" in m.vmflags:
        return "hugetlb"
    if m.shared:
        return "shm" if unlinked_or_shmem(pid, m) else "shfile"
    if not m.file_backed:
        if m.path == "[heap]":
            return "heap"
        if m.path.startswith("[stack") or any(m.start <= sp < m.end for sp in stack_ptrs):
            return "stack"
        return "anon"
    if m.anonymous > 0:
        return "data"
    if m.executable:
        return "text"
    return "rodata"


def never_read(m: Mapping) -> bool:
    """Device memory and raw PFN maps: reading them may have side effects (VM_IO, VM_PFNMAP)."""
    return bool(m.vmflags & {"io", "pf"}) and m.path not in ALWAYS_DUMP


def kernel_default(m: Mapping, cls: str, filt: int, is_elf: Callable[[Mapping], bool]) -> Amount:
    f = Filter(filt & 0x1FF)
    if m.path in ALWAYS_DUMP:
        return Amount.WHOLE
    if "dd" in m.vmflags:
        return Amount.NONE
    if cls == "hugetlb":
        bit = Filter.HUGETLB_SHARED if m.shared else Filter.HUGETLB_PRIVATE
        return Amount.WHOLE if f & bit else Amount.NONE
    if never_read(m):
        return Amount.NONE
    if m.shared:
        # i_nlink == 0 (SysV shm, shared anonymous, memfd all print " (deleted)") is bit 1.
        unlinked = m.deleted or not m.path.startswith("/")
        bit = Filter.ANON_SHARED if unlinked else Filter.MAPPED_SHARED
        return Amount.WHOLE if f & bit else Amount.NONE
    # The kernel dumps private mappings that have anonymous pages (vma->anon_vma) under bit 0.
    # An anonymous mapping never written is all holes for us anyway, so we count it as written.
    if (not m.file_backed or m.anonymous > 0) and f & Filter.ANON_PRIVATE:
        return Amount.WHOLE
    if not m.file_backed:
        return Amount.NONE
    if f & Filter.MAPPED_PRIVATE:
        return Amount.WHOLE
    if f & Filter.ELF_HEADERS and is_elf(m):
        return Amount.ELFHDR
    return Amount.NONE


def decide(
    spec: ContentSpec,
    m: Mapping,
    cls: str,
    filt: int,
    is_elf: Callable[[Mapping], bool],
) -> Amount:
    """Evaluate ``spec`` left to right for one mapping."""

    def match(name: str) -> Amount:
        if name == "all":
            return Amount.WHOLE
        if name == "none":
            return Amount.NONE
        if name == "default":
            return kernel_default(m, cls, filt, is_elf)
        if name == "dontdump":
            return Amount.WHOLE if "dd" in m.vmflags else Amount.NONE
        if name == "elfhdr":
            return Amount.ELFHDR if is_elf(m) else Amount.NONE
        return Amount.WHOLE if name == cls else Amount.NONE

    amount = Amount.NONE
    for op, name in spec.terms:
        v = match(name)
        if op == "+":
            amount = max(amount, v)
        elif v == Amount.WHOLE or (v == Amount.ELFHDR and amount == Amount.ELFHDR):
            amount = Amount.NONE
    if "dd" in m.vmflags and amount and not dontdump_allowed(spec):
        amount = Amount.NONE
    if never_read(m):
        amount = Amount.NONE
    return amount


def dontdump_allowed(spec: ContentSpec) -> bool:
    """MADV_DONTDUMP mappings are left out unless ``dontdump`` (or ``all``) is in the spec."""
    allowed = False
    for op, name in spec.terms:
        if name in ("dontdump", "all"):
            allowed = op == "+"
    return allowed


def elf_checker(read: Callable[[int, int], bytes | None]) -> Callable[[Mapping], bool]:
    """Build ``is_elf(m)``: a readable, offset-0 file mapping whose first bytes are ELF magic."""
    cache: dict[int, bool] = {}

    def is_elf(m: Mapping) -> bool:
        if not (m.file_backed and m.offset == 0 and m.readable):
            return False
        if m.start not in cache:
            head = read(m.start, 4)
            cache[m.start] = head == b"\x7fELF"
        return cache[m.start]

    return is_elf
