"""Which mappings go into a core, decided without a target (snapd.core.select): the kernel's
own choice for every coredump_filter bit and VmFlags case (fs/coredump.c vma_dump_size), and
content specs read left to right on top of it. Mappings are built as /proc/PID/smaps shows
them; no root, no process."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from snapd.content import parse_spec
from snapd.core.select import Amount, Filter, classify, decide, dontdump_allowed, elf_checker, kernel_default
from snapd.procfs import Mapping

WHOLE, ELFHDR, NONE = Amount.WHOLE, Amount.ELFHDR, Amount.NONE
ALL_BITS = 0x1FF
KERNEL_DEFAULT = 0x33  # anon private + shared, ELF headers, hugetlb private (core(5))
PAGE = 4096


def mapping(
    path: str = "",
    perms: str = "rw-p",
    *,
    vmflags: str = "",
    anonymous: int | None = None,
    offset: int = 0,
    inode: int | None = None,
) -> Mapping:
    """A VMA as smaps prints it: a file path has an inode unless ``inode`` says otherwise; the
    resident pages of a private mapping without a file are anonymous pages unless
    ``anonymous`` says otherwise (smaps' Anonymous:)."""
    if inode is None:
        inode = 4242 if path.startswith("/") else 0
    if anonymous is None:
        anonymous = 16 * PAGE if perms[3] == "p" and not inode else 0
    flags = {"r": "rd", "w": "wr", "x": "ex"}
    base = [flags[c] for c in perms[:3] if c in flags] + ["mr", "mw", "me"]
    if perms[3] == "s":
        base += ["sh", "ms"]
    return Mapping(
        start=0x7F00_0000_0000,
        end=0x7F00_0000_0000 + 16 * PAGE,
        perms=perms,
        offset=offset,
        dev=(8, 1) if inode else (0, 0),
        inode=inode,
        path=path,
        rss=16 * PAGE,
        anonymous=anonymous,
        vmflags=frozenset(base + vmflags.split()),
    )


def is_elf(m: Mapping) -> bool:
    """What elf_checker() would find: the libraries here start with ELF magic, nothing else."""
    return m.path.startswith("/usr/lib/") and m.offset == 0 and m.readable


def never_elf(m: Mapping) -> bool:
    return False


HEAP = mapping("[heap]")
ANON = mapping()
STACK = mapping("[stack]")
TEXT = mapping("/usr/lib/libc.so.6", "r-xp")
RODATA = mapping("/usr/lib/libc.so.6", "r--p", offset=0x1000)
RODATA_HEAD = mapping("/usr/lib/libc.so.6", "r--p")
DATA = mapping("/usr/lib/libc.so.6", "rw-p", offset=0x20_0000, anonymous=PAGE)
SHM_ANON = mapping("/dev/zero (deleted)", "rw-s", inode=7)
SYSV = mapping("/SYSV00000000 (deleted)", "rw-s", inode=8)
MEMFD = mapping("/memfd:pool (deleted)", "rw-s", inode=9)
SHFILE = mapping("/var/lib/db/table", "rw-s")
SHFILE_DELETED = mapping("/var/lib/db/old (deleted)", "rw-s")
HUGE_PRIVATE = mapping("/anon_hugepage (deleted)", "rw-p", vmflags="ht")
HUGE_SHARED = mapping("/dev/hugepages/x", "rw-s", vmflags="ht")
VDSO = mapping("[vdso]", "r-xp")


@pytest.mark.parametrize("special", ["[vdso]", "[vsyscall]", "[vvar]", "[vvar_vclock]"])
def test_always_dumped_whatever_the_filter(special: str) -> None:
    """always_dump_vma(): the gate and special mappings, even marked MADV_DONTDUMP."""
    m = mapping(special, "r--p", vmflags="dd")
    assert kernel_default(m, "vdso", 0, is_elf) == WHOLE


@pytest.mark.parametrize("m", [HEAP, TEXT, SHM_ANON, HUGE_PRIVATE], ids=["heap", "text", "shm", "hugetlb"])
def test_dontdump_is_never_dumped(m: Mapping) -> None:
    dd = mapping(m.path, m.perms, vmflags=" ".join(sorted(m.vmflags | {"dd"})), anonymous=m.anonymous)
    assert kernel_default(dd, "anon", ALL_BITS, is_elf) == NONE


@pytest.mark.parametrize(
    ("m", "bit"),
    [(HUGE_PRIVATE, Filter.HUGETLB_PRIVATE), (HUGE_SHARED, Filter.HUGETLB_SHARED)],
    ids=["private", "shared"],
)
def test_hugetlb_follows_its_own_bits(m: Mapping, bit: Filter) -> None:
    assert kernel_default(m, "hugetlb", bit, is_elf) == WHOLE
    # every other bit, including the anonymous and file ones, leaves it out
    assert kernel_default(m, "hugetlb", ALL_BITS & ~bit, is_elf) == NONE


@pytest.mark.parametrize("flag", ["io", "pf"])
def test_device_memory_is_never_read(flag: str) -> None:
    """VM_IO (and, to be safe, VM_PFNMAP): reading such a mapping may have side effects."""
    m = mapping("/dev/mem", "rw-s", vmflags=flag)
    assert kernel_default(m, "shfile", ALL_BITS, is_elf) == NONE
    assert decide(parse_spec("all"), m, "shfile", ALL_BITS, is_elf) == NONE


@pytest.mark.parametrize(
    "m", [SHM_ANON, SYSV, MEMFD, SHFILE_DELETED], ids=["anon", "sysv", "memfd", "deleted"]
)
def test_shared_unlinked_is_bit_1(m: Mapping) -> None:
    """i_nlink == 0: shared anonymous memory, SysV shm, memfd and deleted files."""
    assert kernel_default(m, "shm", Filter.ANON_SHARED, is_elf) == WHOLE
    assert kernel_default(m, "shm", ALL_BITS & ~Filter.ANON_SHARED, is_elf) == NONE


def test_shared_file_is_bit_3() -> None:
    assert kernel_default(SHFILE, "shfile", Filter.MAPPED_SHARED, is_elf) == WHOLE
    assert kernel_default(SHFILE, "shfile", ALL_BITS & ~Filter.MAPPED_SHARED, is_elf) == NONE


@pytest.mark.parametrize("m", [HEAP, ANON, STACK], ids=["heap", "anon", "stack"])
def test_private_anonymous_is_bit_0(m: Mapping) -> None:
    assert kernel_default(m, "anon", Filter.ANON_PRIVATE, is_elf) == WHOLE
    # no vm_file: the file bits do not apply
    assert kernel_default(m, "anon", ALL_BITS & ~Filter.ANON_PRIVATE, is_elf) == NONE


def test_untouched_private_anonymous_is_left_out() -> None:
    """No page ever faulted in, no anon_vma (mm/rmap.c anon_vma_prepare runs at the first
    write fault): vma_dump_size() has nothing to test and writes nothing, whatever the filter."""
    m = mapping(anonymous=0)
    assert kernel_default(m, "anon", ALL_BITS, is_elf) == NONE


def test_written_file_mapping_is_bit_0_or_2() -> None:
    """A private file mapping with anonymous (copied-on-write) pages has an anon_vma."""
    assert kernel_default(DATA, "data", Filter.ANON_PRIVATE, is_elf) == WHOLE
    assert kernel_default(DATA, "data", Filter.MAPPED_PRIVATE, is_elf) == WHOLE
    assert kernel_default(DATA, "data", Filter.ANON_SHARED | Filter.MAPPED_SHARED, is_elf) == NONE


def test_unwritten_file_mapping_is_bit_2_or_its_elf_header() -> None:
    assert kernel_default(TEXT, "text", Filter.ANON_PRIVATE, is_elf) == NONE
    assert kernel_default(TEXT, "text", Filter.MAPPED_PRIVATE, is_elf) == WHOLE
    assert kernel_default(TEXT, "text", Filter.ELF_HEADERS, is_elf) == ELFHDR
    assert kernel_default(RODATA_HEAD, "rodata", Filter.ELF_HEADERS, is_elf) == ELFHDR
    # not the start of the file, or not an ELF file: nothing
    assert kernel_default(RODATA, "rodata", Filter.ELF_HEADERS, lambda m: m.offset == 0) == NONE
    assert kernel_default(TEXT, "text", Filter.ELF_HEADERS, never_elf) == NONE
    # the whole mapping wins over its first page
    assert kernel_default(TEXT, "text", Filter.MAPPED_PRIVATE | Filter.ELF_HEADERS, is_elf) == WHOLE


def test_the_kernels_default_filter() -> None:
    got = {
        name: kernel_default(m, cls, KERNEL_DEFAULT, is_elf)
        for name, m, cls in [
            ("heap", HEAP, "heap"),
            ("anon", ANON, "anon"),
            ("stack", STACK, "stack"),
            ("data", DATA, "data"),
            ("text", TEXT, "text"),
            ("rodata", RODATA, "rodata"),
            ("shm", SYSV, "shm"),
            ("shfile", SHFILE, "shfile"),
            ("hugetlb-private", HUGE_PRIVATE, "hugetlb"),
            ("hugetlb-shared", HUGE_SHARED, "hugetlb"),
            ("vdso", VDSO, "vdso"),
        ]
    }
    assert got == {
        "heap": WHOLE,
        "anon": WHOLE,
        "stack": WHOLE,
        "data": WHOLE,
        "text": ELFHDR,
        "rodata": NONE,
        "shm": WHOLE,
        "shfile": NONE,
        "hugetlb-private": WHOLE,
        "hugetlb-shared": NONE,
        "vdso": WHOLE,
    }


def test_filter_bits_above_the_known_ones_are_ignored() -> None:
    assert kernel_default(HEAP, "heap", 0xFFFF_FE00, is_elf) == NONE
    assert kernel_default(HEAP, "heap", 0xFFFF_FE00 | Filter.ANON_PRIVATE, is_elf) == WHOLE


# --- content specs ------------------------------------------------------------------------


def amounts(spec: str, *cases: tuple[Mapping, str], filt: int = KERNEL_DEFAULT) -> list[Amount]:
    s = parse_spec(spec)
    return [decide(s, m, cls, filt, is_elf) for m, cls in cases]


def test_aggregates() -> None:
    cases = [(HEAP, "heap"), (TEXT, "text"), (SHFILE, "shfile")]
    assert amounts("all", *cases) == [WHOLE, WHOLE, WHOLE]
    assert amounts("none", *cases) == [NONE, NONE, NONE]
    assert amounts("default", *cases) == [WHOLE, ELFHDR, NONE]
    assert amounts("default", *cases, filt=0) == [NONE, NONE, NONE]  # the target's own filter


def test_a_class_selects_only_its_mappings() -> None:
    cases = [(HEAP, "heap"), (ANON, "anon"), (TEXT, "text"), (SYSV, "shm")]
    assert amounts("heap", *cases) == [WHOLE, NONE, NONE, NONE]
    assert amounts("heap+shm", *cases) == [WHOLE, NONE, NONE, WHOLE]
    assert amounts("elfhdr", *cases) == [NONE, NONE, ELFHDR, NONE]
    assert amounts("text+elfhdr", *cases) == [NONE, NONE, WHOLE, NONE]


def test_terms_are_read_left_to_right() -> None:
    cases = [(HEAP, "heap"), (TEXT, "text"), (SYSV, "shm")]
    assert amounts("all-heap", *cases) == [NONE, WHOLE, WHOLE]
    assert amounts("default-shm", *cases) == [WHOLE, ELFHDR, NONE]
    assert amounts("default-text", *cases) == [WHOLE, NONE, WHOLE]  # removing the class drops its header
    assert amounts("default-elfhdr", *cases) == [WHOLE, NONE, WHOLE]
    assert amounts("all-elfhdr", *cases) == [WHOLE, WHOLE, WHOLE]  # a header less than WHOLE takes nothing
    assert amounts("heap-heap+heap", *cases) == [WHOLE, NONE, NONE]
    assert amounts("shm-all+heap", *cases) == [WHOLE, NONE, NONE]


def test_dontdump_only_when_asked() -> None:
    dd_heap = mapping("[heap]", vmflags="dd")
    for spec, want in [
        ("default", NONE),
        ("heap", NONE),  # the class alone does not override MADV_DONTDUMP
        ("heap+dontdump", WHOLE),
        ("dontdump", WHOLE),
        ("all", WHOLE),
        ("all-dontdump", NONE),
        ("dontdump-dontdump+heap", NONE),  # the last word on dontdump is a '-'
    ]:
        assert amounts(spec, (dd_heap, "heap")) == [want], spec
    # and it never adds a mapping that is not marked
    assert amounts("dontdump", (HEAP, "heap")) == [NONE]


def test_dontdump_allowed() -> None:
    assert dontdump_allowed(parse_spec("all"))
    assert dontdump_allowed(parse_spec("default+dontdump"))
    assert not dontdump_allowed(parse_spec("default"))
    assert not dontdump_allowed(parse_spec("all-dontdump"))
    assert dontdump_allowed(parse_spec("all-dontdump+dontdump"))


def test_classify_private_mappings() -> None:
    """classify() looks no further than smaps for anything but a shared regular file."""
    pid = 0  # never read: nothing here needs /proc
    for m, want in [
        (VDSO, "vdso"),
        (HUGE_PRIVATE, "hugetlb"),
        (HEAP, "heap"),
        (STACK, "stack"),
        (ANON, "anon"),
        (DATA, "data"),
        (TEXT, "text"),
        (RODATA, "rodata"),
        (SHM_ANON, "shm"),
        (SYSV, "shm"),
        (MEMFD, "shm"),
        (SHFILE_DELETED, "shm"),
    ]:
        assert classify(pid, m, frozenset()) == want, m.path
    # an anonymous mapping holding a thread's stack pointer is that thread's stack
    assert classify(pid, ANON, {ANON.start + PAGE}) == "stack"
    assert classify(pid, ANON, {ANON.end}) == "anon"


def test_elf_checker_reads_once_per_mapping() -> None:
    reads: list[tuple[int, int]] = []

    def read(addr: int, n: int) -> bytes | None:
        reads.append((addr, n))
        return b"\x7fELF" if addr == TEXT.start else None

    check: Callable[[Mapping], bool] = elf_checker(read)
    assert check(TEXT) and check(TEXT)
    assert reads == [(TEXT.start, 4)]
    assert not check(RODATA)  # offset != 0: not even read
    assert not check(HEAP)  # anonymous
    assert not check(mapping("/usr/lib/x.so", "---p"))  # not readable
    assert len(reads) == 1
