"""Which ELF files a core maps, and their GNU build-ids, read with pyelftools.

A core names its files in NT_FILE (fs/binfmt_elf.c fill_files_note: start, end, page offset and
path of every file-backed VMA) and, when the content included ELF headers (coredump_filter bit 4,
our ``elfhdr`` class), holds the first page of each, where the NT_GNU_BUILD_ID note of a normal
link lies (ld places .note.gnu.build-id right after the program headers). The executable is the
file mapped at AT_ENTRY (auxv, getauxval(3)). The core is hostile input: reads are one page each
and counts are those pyelftools parsed from a file we already bounded.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.common.utils import struct_parse
from elftools.elf.elffile import ELFFile
from elftools.elf.notes import iter_notes

from snapd.ship.errors import BundleError

PAGE = 4096
AT_ENTRY = 9
PF_X = 1
DELETED = " (deleted)"
#: NT_FILE names at most this many mappings (the kernel caps the note at 4 MiB, MAX_FILE_NOTE_SIZE)
MAX_FILES = 1 << 16


@dataclass(frozen=True)
class MappedFile:
    path: str  # as the process saw it, without " (deleted)"
    start: int  # address of its page-offset-0 mapping (0 if none was mapped)
    build_id: str | None  # hex, from its ELF header page in the core; None if not dumped
    deleted: bool = False
    code: bool = False  # some mapping of it is executable: a program or library that ran


@dataclass
class CoreFiles:
    pid: int = 0
    comm: str = ""
    psargs: str = ""
    exe: str = ""  # path of the file mapped at AT_ENTRY
    files: list[MappedFile] = field(default_factory=list)

    def build_ids(self) -> dict[str, str]:
        return {f.path: f.build_id for f in self.files if f.build_id}


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def header_build_id(page: bytes) -> str | None:
    """The GNU build-id in the PT_NOTE segments that lie inside ``page`` (an ELF file's start)."""
    if len(page) < 64 or page[:4] != b"\x7fELF":
        return None
    try:
        elf = ELFFile(io.BytesIO(page))
        for i in range(min(elf.num_segments(), 128)):
            off = elf["e_phoff"] + i * elf["e_phentsize"]
            if off + elf["e_phentsize"] > len(page):
                break
            ph = struct_parse(elf.structs.Elf_Phdr, elf.stream, off)
            if ph["p_type"] == "PT_NOTE" and ph["p_offset"] + ph["p_filesz"] <= len(page):
                bid = _gnu_build_id(elf, ph["p_offset"], ph["p_filesz"])
                if bid:
                    return bid
    except (ELFError, ValueError, struct.error, KeyError):
        return None
    return None


def _gnu_build_id(elf: ELFFile, offset: int, size: int) -> str | None:
    for n in iter_notes(elf, offset, size):
        if n["n_type"] == "NT_GNU_BUILD_ID" and n["n_name"] == "GNU":
            return str(n["n_desc"])
    return None


def file_build_id(path: str) -> str | None:
    """The GNU build-id of an ELF file on disk (any of its PT_NOTE segments), or None."""
    try:
        with open(path, "rb") as f:
            return fd_build_id(f)
    except OSError:
        return None


def fd_build_id(f: io.BufferedReader) -> str | None:
    try:
        if f.read(4) != b"\x7fELF":
            return None
        f.seek(0)
        elf = ELFFile(f)
        for ph in elf.iter_segments(type="PT_NOTE"):
            if ph["p_filesz"] <= 1 << 20:
                bid = _gnu_build_id(elf, ph["p_offset"], ph["p_filesz"])
                if bid:
                    return bid
    except (ELFError, ValueError, struct.error, KeyError, OSError):
        return None
    return None


def read_core_files(path: str) -> CoreFiles:
    """The process identity and mapped ELF files of the core at ``path``."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; open errors are ours)
    except OSError as err:
        raise BundleError(path, f"cannot read core: {err.strerror}") from err
    with f:
        try:
            return _read(f, path)
        except (ELFError, ValueError, struct.error, KeyError) as err:
            raise BundleError(path, f"not a valid ELF core: {err}") from err


def _read(f: io.BufferedReader, path: str) -> CoreFiles:
    elf = ELFFile(f)
    if elf.header["e_type"] != "ET_CORE":
        raise BundleError(path, f"not a core file (ELF type {elf.header['e_type']})")
    out = CoreFiles()
    entry = 0
    nt_file: list[tuple[int, int, int, str]] = []
    loads: dict[int, tuple[int, int]] = {}  # vaddr -> (offset, filesz)
    executable: set[int] = set()  # vaddr of PT_LOADs with PF_X
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD":
            loads[seg["p_vaddr"]] = (seg["p_offset"], seg["p_filesz"])
            if seg["p_flags"] & PF_X:
                executable.add(seg["p_vaddr"])
        elif seg["p_type"] == "PT_NOTE":
            for n in seg.iter_notes():  # type: ignore[attr-defined]
                t = n["n_type"]
                if t == "NT_PRPSINFO" and n["n_name"] == "CORE":
                    d = n["n_desc"]
                    out.pid, out.comm, out.psargs = d["pr_pid"], _cstr(d["pr_fname"]), _cstr(d["pr_psargs"])
                elif t == "NT_AUXV":
                    raw = n["n_descdata"]
                    for i in range(0, len(raw) - 15, 16):
                        k, v = struct.unpack_from("<QQ", raw, i)
                        if k == AT_ENTRY:
                            entry = v
                elif t == "NT_FILE":
                    d = n["n_desc"]
                    ents, names = d["Elf_Nt_File_Entry"], d["filename"]
                    for e, name in list(zip(ents, names, strict=False))[:MAX_FILES]:
                        nm = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else str(name)
                        nt_file.append((e["vm_start"], e["vm_end"], e["page_offset"], nm))
    seen: dict[str, MappedFile] = {}
    code: set[str] = set()
    for start, end, pgoff, name in nt_file:
        deleted = name.endswith(DELETED)
        clean = name[: -len(DELETED)] if deleted else name
        if start <= entry < end:
            out.exe = clean
        if not clean.startswith("/"):
            continue
        if start in executable:
            code.add(clean)
        prev = seen.get(clean)
        if pgoff != 0 or (prev is not None and prev.start):
            if prev is None:
                seen[clean] = MappedFile(clean, 0, None, deleted)
            continue
        bid = None
        if start in loads:
            off, filesz = loads[start]
            if filesz >= 64:
                f.seek(off)
                bid = header_build_id(f.read(min(filesz, PAGE)))
        seen[clean] = MappedFile(clean, start, bid, deleted)
    out.files = [dataclasses.replace(m, code=m.path in code) for m in seen.values()]
    return out
