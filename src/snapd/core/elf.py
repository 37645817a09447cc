"""ELF64 structures for an x86_64 ET_CORE file, laid out as fs/binfmt_elf.c writes them."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag


class ET(IntEnum):
    CORE = 4


class PT(IntEnum):
    LOAD = 1
    NOTE = 4


class PF(IntFlag):
    X = 1
    W = 2
    R = 4


class NT(IntEnum):
    """Note types (include/uapi/linux/elf.h); also the regset selectors for PTRACE_GETREGSET."""

    PRSTATUS = 1
    PRFPREG = 2
    PRPSINFO = 3
    AUXV = 6
    X86_XSTATE = 0x202
    SIGINFO = 0x53494749
    FILE = 0x46494C45


EM_X86_64 = 62
PN_XNUM = 0xFFFF  # e_phnum escape: the real count is in section header 0's sh_info
EHDR_SIZE = 64
PHDR_SIZE = 56
SHDR_SIZE = 64
PAGE = 4096

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_NHDR = struct.Struct("<III")


@dataclass(frozen=True)
class Phdr:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int

    def pack(self) -> bytes:
        return _PHDR.pack(
            self.type, self.flags, self.offset, self.vaddr, 0, self.filesz, self.memsz, self.align
        )


def ehdr(phnum: int, shoff: int = 0) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, LSB, EV_CURRENT, SYSV
    xnum = phnum >= PN_XNUM
    return _EHDR.pack(
        ident,
        ET.CORE,
        EM_X86_64,
        1,
        0,  # e_entry
        EHDR_SIZE,  # e_phoff
        shoff if xnum else 0,
        0,  # e_flags
        EHDR_SIZE,
        PHDR_SIZE,
        PN_XNUM if xnum else phnum,
        SHDR_SIZE if xnum else 0,
        1 if xnum else 0,  # e_shnum
        0,  # e_shstrndx: SHN_UNDEF
    )


def xnum_shdr(phnum: int) -> bytes:
    """Section header 0 carrying the real segment count (fs/binfmt_elf.c fill_extnum_info)."""
    return _SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One note: Elf64_Nhdr, the NUL-terminated name and the descriptor, each padded to 4."""
    n = name + b"\0"
    return (
        _NHDR.pack(len(n), len(desc), ntype)
        + n.ljust(_pad4(len(n)), b"\0")
        + desc.ljust(_pad4(len(desc)), b"\0")
    )


def page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)
