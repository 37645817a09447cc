"""Which mappings go into the core, and how much of each.

Each VMA gets one content class (the vocabulary of :mod:`snapd.content`), and the spec decides
NONE / ELFHDR (first page only) / WHOLE. ``default`` decides exactly as the kernel does for the
target's coredump_filter (fs/coredump.c vma_dump_size), from what /proc/PID/smaps shows:

- special mappings ([vdso], [vvar], [vsyscall], [uprobes]...) always, whole, even VM_DONTDUMP
  or VM_IO ones (always_dump_vma comes first);
- VM_DONTDUMP (VmFlags ``dd``): nothing; hugetlb (``ht``) by bits 5/6; VM_IO (``io``): nothing;
- VM_SHARED (``sh``, not the ``s`` of the perms, which is VM_MAYSHARE, ``ms``: a read-only
  MAP_SHARED file mapping is private to this filter): bit 1 for an unlinked file (shmem,
  SysV, memfd), else bit 3;
- private with an anon_vma (anonymous pages: written or COWed; seen as Anonymous or Swap in
  smaps): bit 0; other anonymous: nothing; other file: bit 2;
- else, with bit 4, a readable pgoff-0 file mapping gets its first page when the file has an
  exec bit or starts with the ELF magic.

One approximation: a private mapping whose anonymous pages were all dropped again
(MADV_DONTNEED) keeps its anon_vma, so the kernel writes it (as zeros) and snapd does not.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from enum import IntEnum, IntFlag

from snapd.content import ContentSpec
from snapd.procfs import Mapping
from snapd.sys.fs import TMPFS_MAGIC, fs_type

#: special mappings whose pages cannot be read (VM_PFNMAP, VM_IO): in a kernel core with their
#: size, here all holes
UNREADABLE_SPECIAL = frozenset({"[vvar]", "[vvar_vclock]", "[uprobes]"})
ALWAYS_DUMP = frozenset({"[vdso]", "[vsyscall]", *UNREADABLE_SPECIAL})


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


def unlinked_or_shmem(pid: int, m: Mapping) -> bool:
    """Shared memory in the coreadm sense: SysV shm, shared anonymous, memfd, tmpfs files.

    The kernel's own test is ``i_nlink == 0`` (deleted: shm, /dev/zero, memfd); tmpfs files
    that still have a name are shm for us too, found by statfs() on /proc/PID/map_files.
    """
    if m.deleted or m.path.startswith(("/SYSV", "/dev/zero", "/memfd:", "[anon_shmem")):
        return True
    if not m.path.startswith("/"):
        return not m.file_backed
    return fs_type(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}") == TMPFS_MAGIC


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
    if has_anon_vma(m):
        return "data"
    if m.executable:
        return "text"
    return "rodata"


def never_read(m: Mapping) -> bool:
    """Device memory and raw PFN maps: reading them may have side effects (VM_IO, VM_PFNMAP)."""
    return bool(m.vmflags & {"io", "pf"}) and m.path not in ALWAYS_DUMP


def vm_shared(m: Mapping) -> bool:
    """VM_SHARED: MAP_SHARED and writable through its file (smaps VmFlags ``sh``). Without
    VmFlags (maps, not smaps), the perms' ``s`` is the closest there is."""
    return "sh" in m.vmflags if m.vmflags else m.shared


def has_anon_vma(m: Mapping) -> bool:
    """Whether the kernel has given the mapping an anon_vma: it has, or had, anonymous pages."""
    return m.anonymous > 0 or m.swap > 0


def kernel_default(m: Mapping, cls: str, filt: int, is_elf: Callable[[Mapping], bool]) -> Amount:
    f = Filter(filt & 0x1FF)
    if m.path in ALWAYS_DUMP:
        return Amount.WHOLE
    if "dd" in m.vmflags:
        return Amount.NONE
    shared = vm_shared(m)
    if cls == "hugetlb":
        bit = Filter.HUGETLB_SHARED if shared else Filter.HUGETLB_PRIVATE
        return Amount.WHOLE if f & bit else Amount.NONE
    if never_read(m):
        return Amount.NONE
    if shared:
        # i_nlink == 0 (SysV shm, shared anonymous, memfd all print " (deleted)") is bit 1.
        unlinked = m.deleted or not m.path.startswith("/")
        bit = Filter.ANON_SHARED if unlinked else Filter.MAPPED_SHARED
        return Amount.WHOLE if f & bit else Amount.NONE
    if has_anon_vma(m) and f & Filter.ANON_PRIVATE:
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
    if m.path in ALWAYS_DUMP:
        return amount  # the kernel's always_dump_vma: even VM_DONTDUMP ([vvar] is)
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


def elf_checker(
    read: Callable[[int, int], bytes | None], pid: int | None = None
) -> Callable[[Mapping], bool]:
    """Build ``is_elf(m)``: a readable, offset-0 file mapping whose file has an exec bit or
    whose first bytes are the ELF magic (the kernel's ELF_HEADERS test; it looks at the file's
    mode first, then at the bytes). The mode is read through /proc/PID/map_files (``pid``)."""
    cache: dict[int, bool] = {}

    def is_elf(m: Mapping) -> bool:
        if not (m.file_backed and m.offset == 0 and m.readable):
            return False
        if m.start not in cache:
            cache[m.start] = _executable(pid, m) or read(m.start, 4) == b"\x7fELF"
        return cache[m.start]

    return is_elf


def _executable(pid: int | None, m: Mapping) -> bool:
    if pid is None:
        return False
    try:
        mode = os.stat(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}").st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) and bool(mode & 0o111)
