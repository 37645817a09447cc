"""What a report needs of a core's own notes, read with pyelftools: the threads in the core's
order, the process's comm and state (NT_PRPSINFO), and the raw notes and segments from which an
"at the event" core is derived (:mod:`snapd.report.derived`).

Runs only in the sandboxed worker: the core is hostile input (a truncated or forged file raises
here, and the worker turns that into the report's error)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from snapd.core.elf import PT
from snapd.errors import SnapdError

# include/uapi/linux/elf.h
NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_AUXV = 6
NT_FILE = 0x46494C45
_NAMED = {"NT_PRSTATUS": NT_PRSTATUS, "NT_PRPSINFO": NT_PRPSINFO, "NT_AUXV": NT_AUXV, "NT_FILE": NT_FILE}
PRSTATUS_TID = 32  # offsetof(struct elf_prstatus, pr_pid)
PRSTATUS_REGS = 112  # offsetof(struct elf_prstatus, pr_reg): struct user_regs_struct
MAX_NOTES = 1 << 20
MAX_NOTE_BYTES = 64 << 20


class BadCore(SnapdError):
    def __init__(self, msg: str) -> None:
        super().__init__(f"not a readable core: {msg}")


@dataclass(frozen=True)
class Load:
    vaddr: int
    memsz: int
    filesz: int
    offset: int
    flags: int


@dataclass
class CoreNotes:
    pid: int = 0
    comm: str | None = None
    state: str | None = None
    tids: list[int] = field(default_factory=list)  # NT_PRSTATUS order
    prstatus: dict[int, bytes] = field(default_factory=dict)
    prpsinfo: bytes = b""
    auxv: bytes = b""
    file: bytes = b""
    loads: list[Load] = field(default_factory=list)
    size: int = 0  # the file's length: a PT_LOAD past it was cut off

    def regs(self, tid: int) -> tuple[int, ...]:
        return struct.unpack_from("<27Q", self.prstatus[tid], PRSTATUS_REGS)

    def files(self) -> list[tuple[int, int, int, str]]:
        """NT_FILE: (start, end, page offset, path) per file mapping."""
        raw = self.file
        if len(raw) < 16:
            return []
        count, _page = struct.unpack_from("<QQ", raw, 0)
        count = min(count, (len(raw) - 16) // 24)
        names = raw[16 + 24 * count :].split(b"\0")
        out = []
        for i in range(min(count, len(names))):
            start, end, pgoff = struct.unpack_from("<QQQ", raw, 16 + 24 * i)
            out.append((start, end, pgoff, names[i].decode("utf-8", "replace")))
        return out

    def auxv_value(self, key: int) -> int | None:
        for off in range(0, len(self.auxv) - 15, 16):
            k, v = struct.unpack_from("<QQ", self.auxv, off)
            if k == key:
                return int(v)
        return None

    def read(self, f: BinaryIO, addr: int, size: int) -> bytes:
        """Bytes of the target's memory at ``addr`` as the core holds them (b"" if absent)."""
        for seg in self.loads:
            if seg.vaddr <= addr < seg.vaddr + seg.memsz:
                off = addr - seg.vaddr
                if off >= seg.filesz:
                    return b""
                f.seek(seg.offset + off)
                return f.read(min(size, seg.filesz - off))
        return b""


def _type(t: object) -> int:
    if isinstance(t, int):
        return t
    return _NAMED.get(str(t), -1)


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_notes(f: BinaryIO) -> CoreNotes:
    """Parse the notes and PT_LOADs of the core open as ``f``; raises :class:`BadCore`."""
    out = CoreNotes(size=os.fstat(f.fileno()).st_size)
    try:
        elf = ELFFile(f)
        if elf.header["e_type"] != "ET_CORE":
            raise BadCore(f"ELF type {elf.header['e_type']}, not a core")
        if elf.header["e_machine"] != "EM_X86_64":
            raise BadCore(f"machine {elf.header['e_machine']}: only x86_64 cores are read")
        seen = 0
        budget = MAX_NOTE_BYTES
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                out.loads.append(
                    Load(seg["p_vaddr"], seg["p_memsz"], seg["p_filesz"], seg["p_offset"], seg["p_flags"])
                )
                continue
            if seg["p_type"] != "PT_NOTE":
                continue
            budget -= seg["p_filesz"]
            if budget < 0:
                raise BadCore(f"notes over {MAX_NOTE_BYTES >> 20} MiB")
            for n in seg.iter_notes():  # type: ignore[attr-defined]
                seen += 1
                if seen > MAX_NOTES:
                    raise BadCore(f"more than {MAX_NOTES} notes")
                if n["n_name"] != "CORE":
                    continue
                desc = n["n_descdata"]
                raw: bytes = desc if isinstance(desc, bytes) else bytes(desc, "latin-1")
                _note(out, _type(n["n_type"]), raw)
    except ELFError as err:
        raise BadCore(str(err)) from err
    except (struct.error, ValueError, EOFError) as err:
        raise BadCore(f"truncated or malformed ({err})") from err
    return out


def _note(out: CoreNotes, ntype: int, raw: bytes) -> None:
    if ntype == NT_PRSTATUS and len(raw) >= PRSTATUS_REGS + 27 * 8:
        tid = struct.unpack_from("<i", raw, PRSTATUS_TID)[0]
        if tid not in out.prstatus:
            out.tids.append(tid)
            out.prstatus[tid] = raw
    elif ntype == NT_PRPSINFO and len(raw) >= 136 and not out.prpsinfo:
        out.prpsinfo = raw
        sname = raw[1:2].decode("latin-1")
        out.state = sname if sname.isalpha() else None
        out.pid = struct.unpack_from("<i", raw, 24)[0]
        out.comm = _cstr(raw[40:56])
    elif ntype == NT_AUXV and not out.auxv:
        out.auxv = raw
    elif ntype == NT_FILE and not out.file:
        out.file = raw


__all__ = ["PT", "BadCore", "CoreNotes", "Load", "read_notes"]
