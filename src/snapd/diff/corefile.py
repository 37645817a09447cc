"""What a diff needs of an ELF core, read with every size bounded: the file is hostile input.

Not pyelftools here: whatever a note's header claims (a 4 GiB descriptor, ten million notes,
a program-header table past the end of the file), reading a core must take bounded memory and
turn every malformation into one line (:class:`~snapd.diff.errors.BadCore`). Layouts are
x86_64's, as :mod:`snapd.core.notes` writes them (include/uapi/linux/elfcore.h): NT_PRSTATUS
gives each thread's tid (pr_pid at 32) and stack pointer (pr_reg[19] at 112 + 152), NT_PRPSINFO
the pid (24), comm (40) and arguments (56), NT_FILE the backing file of each mapping, NT_AUXV the
entry point and the vdso, snapd's own note each PT_LOAD's content class and the target's start
time. Cores without snapd's note are classified by :func:`snapd.core.inspect.segment_class`.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any

from elftools.elf.enums import ENUM_CORE_NOTE_N_TYPE

from snapd.core import elf
from snapd.core.notes import NT_SNAPD_INFO
from snapd.diff.errors import BadCore

NT_PRSTATUS = int(ENUM_CORE_NOTE_N_TYPE["NT_PRSTATUS"])
NT_PRPSINFO = int(ENUM_CORE_NOTE_N_TYPE["NT_PRPSINFO"])
NT_AUXV = int(ENUM_CORE_NOTE_N_TYPE["NT_AUXV"])
NT_FILE = int(ENUM_CORE_NOTE_N_TYPE["NT_FILE"])
AT_ENTRY = 9
AT_SYSINFO_EHDR = 33

#: Bounds on what one core may make us hold. max_map_count is 65530 by default and pid_max at
#: most 4M (kernel/pid.c), so these are far above any real process.
MAX_SEGMENTS = 1 << 20
MAX_THREADS = 1 << 20
MAX_NOTES = 1 << 21  # 4-5 a thread: half a million threads
MAX_FILE_NOTE = 64 << 20  # the kernel writes at most 4 MiB (MAX_FILE_NOTE_SIZE); gdb has no bound
MAX_SNAPD_NOTE = 64 << 20
MAX_AUXV = 64 << 10
_CHUNK = 1 << 20

_EHDR = struct.Struct("<4sBBBBB7xHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_NHDR = struct.Struct("<III")
_U64 = 1 << 64


@dataclass(slots=True)
class Load:
    """One PT_LOAD: a mapping of the target and where its contents are in the file."""

    index: int
    start: int
    end: int
    flags: int
    offset: int  # p_offset
    filesz: int  # p_filesz, as the header says
    avail: int  # the part of filesz that the file really holds (less when it is truncated)
    cls: str = "anon"
    file: str = ""

    @property
    def perms(self) -> str:
        f = self.flags
        return ("r" if f & 4 else "-") + ("w" if f & 2 else "-") + ("x" if f & 1 else "-")


@dataclass
class CoreImage:
    """The parts of one core a diff uses; memory stays in the file, read later in windows."""

    path: str
    size: int  # file length
    pid: int = 0
    comm: str = ""
    psargs: str = ""
    exe: str = ""
    tids: list[int] = field(default_factory=list)
    #: NT_FILE: every file mapping (start, end, path), also those the core holds no segment of
    files: list[tuple[int, int, str]] = field(default_factory=list)
    loads: list[Load] = field(default_factory=list)
    snapd: dict[str, Any] = field(default_factory=dict)  # snapd's note, without the classes
    start_time: int | None = None  # ticks after boot, from snapd's note
    time: float = 0.0
    time_source: str = "snapd"  # or "mtime" when the core does not say
    truncated: bool = False
    producer: str = "kernel"  # "snapd" (its note), "gdb" (section headers, as BFD writes), "kernel"
    warnings: list[str] = field(default_factory=list)


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def _pad4(n: int) -> int:
    return (n + 3) & ~3


class _Reader:
    """pread in 1 MiB chunks, so that walking many small notes costs few system calls."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        self.path, self.fd, self.size = path, fd, size
        self.buf = b""
        self.base = 0

    def get(self, off: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``off``, or :class:`BadCore` when the file ends first."""
        if off + n > self.size:
            raise BadCore(self.path, f"truncated: needs {off + n} bytes, the file has {self.size}")
        if not (self.base <= off and off + n <= self.base + len(self.buf)):
            if n > _CHUNK:
                return self._pread(off, n)
            self.buf = self._pread(off, min(_CHUNK, self.size - off))
            self.base = off
        i = off - self.base
        return self.buf[i : i + n]

    def _pread(self, off: int, n: int) -> bytes:
        try:
            data = os.pread(self.fd, n, off)
        except OSError as err:
            raise BadCore(self.path, f"cannot read: {err.strerror or err}") from err
        if len(data) < n:
            raise BadCore(self.path, "the file shrank while it was being read")
        return data


def open_core(path: str, shown: str | None = None) -> tuple[CoreImage, int]:
    """Parse ``path``; return the image and an open O_RDONLY fd on it (the caller closes it).

    ``shown``: the file the user named, when ``path`` is its unpacked copy (a compressed core,
    a bundle): messages and the image name it, and its mtime is the core's time."""
    name = shown or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise BadCore(name, f"cannot open: {err.strerror or err}") from err
    try:
        img = read_image(name, fd)
    except BaseException:
        os.close(fd)
        raise
    if shown is not None and img.time_source == "mtime":
        with contextlib.suppress(OSError):
            img.time = os.stat(shown).st_mtime
    return img, fd


def open_fd(fd: int, name: str) -> tuple[CoreImage, int]:
    """Parse the core open at ``fd`` (``name`` says which in messages); return the image and a
    dup of ``fd`` (the caller closes it). For a confined reader that may not open by path."""
    try:
        mine = os.dup(fd)
    except OSError as err:
        raise BadCore(name, f"cannot read: {err.strerror or err}") from err
    try:
        return read_image(name, mine), mine
    except BaseException:
        os.close(mine)
        raise


def read_image(path: str, fd: int) -> CoreImage:
    try:
        st = os.fstat(fd)
    except OSError as err:
        raise BadCore(path, f"cannot stat: {err.strerror or err}") from err
    if not stat.S_ISREG(st.st_mode):
        raise BadCore(path, "not a regular file, so not a core file")
    img = CoreImage(path, st.st_size, time=st.st_mtime, time_source="mtime")
    r = _Reader(path, fd, st.st_size)
    try:
        phdrs, sections = _headers(r)
        loads: list[Load] = []
        note_segs: list[tuple[int, int]] = []
        for i, (ptype, flags, off, vaddr, filesz, memsz) in enumerate(phdrs):
            if ptype == elf.PT.NOTE:
                note_segs.append((off, filesz))
            elif ptype == elf.PT.LOAD and memsz > 0:
                if vaddr + memsz > _U64 or off + filesz > _U64:
                    raise BadCore(path, f"program header {i}: range beyond 2^64")
                avail = max(0, min(filesz, st.st_size - off))
                loads.append(Load(len(loads), vaddr, vaddr + memsz, flags, off, filesz, avail))
        del phdrs
        facts = _Facts()
        for off, size in note_segs:
            _notes(r, off, size, facts, img)
    except (struct.error, ValueError, OverflowError, UnicodeError) as err:
        raise BadCore(path, f"malformed core ({type(err).__name__}: {err})") from err
    img.loads = loads
    img.truncated = any(ld.avail < ld.filesz for ld in loads)
    if img.truncated:
        img.warnings.append(f"{path} is truncated: what is missing is not compared")
    if not facts.threads and not img.pid:
        raise BadCore(path, "an ELF core without process notes (no NT_PRSTATUS or NT_PRPSINFO)")
    _finish(img, facts)
    if facts.classes is not None or img.snapd:
        img.producer = "snapd"
    elif sections > 1:
        img.producer = "gdb"  # BFD writes section headers; fs/binfmt_elf.c and snapd do not
    return img


def _headers(r: _Reader) -> tuple[list[tuple[int, int, int, int, int, int]], int]:
    """The program headers (type, flags, offset, vaddr, filesz, memsz) and e_shnum."""
    if r.size < 4 or r.get(0, 4) != b"\x7fELF":
        raise BadCore(r.path, "not an ELF file, so not a core file")
    head = r.get(0, elf.EHDR_SIZE)
    (_, cls, data, _ver, _abi, _abiv, etype, machine, _v, _entry, phoff, shoff, _flags, _ehsz,
     phentsize, phnum, shentsize, shnum, _shstrndx) = _EHDR.unpack(head)  # fmt: skip
    if cls != 2 or data != 1:
        raise BadCore(r.path, "not a 64-bit little-endian ELF file; snapd diffs x86_64 cores")
    if etype != elf.ET.CORE:
        raise BadCore(r.path, f"an ELF file of type {etype}, not a core file (type 4)")
    if machine != elf.EM_X86_64:
        raise BadCore(r.path, f"a core for ELF machine {machine}; snapd diffs x86_64 cores")
    if phentsize != elf.PHDR_SIZE:
        raise BadCore(r.path, f"program header size {phentsize}, not {elf.PHDR_SIZE}")
    if phnum == elf.PN_XNUM:  # the real count is in section header 0 (fs/binfmt_elf.c fill_extnum_info)
        if shentsize != elf.SHDR_SIZE or not shoff:
            raise BadCore(r.path, "e_phnum is PN_XNUM but there is no section header 0")
        phnum = struct.unpack_from("<I", r.get(shoff, elf.SHDR_SIZE), 44)[0]
    if phnum > MAX_SEGMENTS:
        raise BadCore(r.path, f"{phnum} program headers, more than the {MAX_SEGMENTS} snapd reads")
    out = []
    per = _CHUNK // elf.PHDR_SIZE
    for first in range(0, phnum, per):
        n = min(per, phnum - first)
        raw = r.get(phoff + first * elf.PHDR_SIZE, n * elf.PHDR_SIZE)
        for ptype, flags, off, vaddr, _pa, filesz, memsz, _al in _PHDR.iter_unpack(raw):
            out.append((ptype, flags, off, vaddr, filesz, memsz))
    return out, shnum


@dataclass
class _Facts:
    threads: list[tuple[int, int]] = field(default_factory=list)  # (tid, sp)
    files: list[tuple[int, int, str]] = field(default_factory=list)  # NT_FILE (start, end, path)
    entry: int = 0
    vdso: int = 0
    classes: list[str] | None = None
    notes: int = 0


def _notes(r: _Reader, off: int, size: int, facts: _Facts, img: CoreImage) -> None:
    end = min(off + size, r.size)
    if end < off + size:
        img.warnings.append(f"{img.path}: the notes are truncated")
    pos = off
    while pos + _NHDR.size <= end:
        facts.notes += 1
        if facts.notes > MAX_NOTES:
            raise BadCore(r.path, f"more than {MAX_NOTES} notes")
        namesz, descsz, ntype = _NHDR.unpack(r.get(pos, _NHDR.size))
        name_off = pos + _NHDR.size
        desc_off = name_off + _pad4(namesz)
        nxt = desc_off + _pad4(descsz)
        if nxt > end:
            raise BadCore(r.path, f"note at offset {pos} runs past its segment")
        name = r.get(name_off, min(namesz, 8)).rstrip(b"\0") if namesz <= 8 else b""
        if name == b"CORE":
            _core_note(r, ntype, desc_off, descsz, facts, img)
        elif name == b"SNAPD" and ntype == NT_SNAPD_INFO:
            if descsz > MAX_SNAPD_NOTE:
                img.warnings.append(f"{img.path}: snapd's note is too large; classes inferred")
            else:
                _snapd_note(r.get(desc_off, descsz), facts, img)
        pos = nxt


def _core_note(r: _Reader, ntype: int, off: int, size: int, facts: _Facts, img: CoreImage) -> None:
    if ntype == NT_PRSTATUS and size >= 112 + 27 * 8:
        if len(facts.threads) >= MAX_THREADS:
            raise BadCore(r.path, f"more than {MAX_THREADS} threads")
        raw = r.get(off, 112 + 27 * 8)
        tid = struct.unpack_from("<i", raw, 32)[0]
        sp = struct.unpack_from("<Q", raw, 112 + 19 * 8)[0]
        facts.threads.append((tid, sp))
    elif ntype == NT_PRPSINFO and size >= 136 and not img.pid:
        raw = r.get(off, 136)
        img.pid = struct.unpack_from("<i", raw, 24)[0]
        img.comm = _cstr(raw[40:56])
        img.psargs = _cstr(raw[56:136])
    elif ntype == NT_AUXV:
        raw = r.get(off, min(size, MAX_AUXV) // 16 * 16)
        for key, value in struct.iter_unpack("<QQ", raw):
            if key == AT_ENTRY:
                facts.entry = value
            elif key == AT_SYSINFO_EHDR:
                facts.vdso = value
    elif ntype == NT_FILE and size >= 16 and not facts.files:
        if size > MAX_FILE_NOTE:
            img.warnings.append(f"{img.path}: NT_FILE is too large; mappings have no file names")
            return
        facts.files = _file_note(r.get(off, size))


def _file_note(raw: bytes) -> list[tuple[int, int, str]]:
    """NT_FILE: u64 count, u64 page size, count x {start, end, pgoff}, then count paths."""
    count = struct.unpack_from("<Q", raw, 0)[0]
    count = min(count, (len(raw) - 16) // 24)
    names = raw[16 + 24 * count :].split(b"\0")
    out = []
    for i, (start, end, _pgoff) in enumerate(struct.iter_unpack("<QQQ", raw[16 : 16 + 24 * count])):
        if i >= len(names):
            break
        out.append((start, end, names[i].decode("utf-8", "replace")))
    return out


def _snapd_note(raw: bytes, facts: _Facts, img: CoreImage) -> None:
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError):
        img.warnings.append(f"{img.path}: snapd's note is not JSON; classes inferred")
        return
    if not isinstance(info, dict):
        return
    classes = info.pop("classes", None)
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        facts.classes = classes
    start = info.get("start_time")
    if isinstance(start, int) and not isinstance(start, bool) and start > 0:
        img.start_time = start
    when = info.get("time")
    if isinstance(when, (int, float)) and not isinstance(when, bool) and 0 < when < 1e11:
        img.time = float(when)
        img.time_source = "snapd"
    info.pop("shared_live", None)  # a list as long as the shared mappings: not needed here
    img.snapd = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))}


def _finish(img: CoreImage, facts: _Facts) -> None:
    img.tids = [t for t, _ in facts.threads]
    img.files = facts.files
    by_start: dict[int, str] = {}
    for start, _end, name in facts.files:
        by_start.setdefault(start, name)
    for start, end, name in facts.files:
        if start <= facts.entry < end:
            img.exe = name
            break
    else:
        img.exe = facts.files[0][2] if facts.files else ""
    classes = facts.classes if facts.classes is not None and len(facts.classes) == len(img.loads) else None
    if facts.classes is not None and classes is None:
        img.warnings.append(
            f"{img.path}: snapd's note names {len(facts.classes)} classes for "
            f"{len(img.loads)} segments; classes inferred"
        )
    sps = sorted(sp for _, sp in facts.threads)
    for ld in img.loads:
        ld.file = by_start.get(ld.start, "")
        if classes is not None:
            ld.cls = classes[ld.index][:32]
        else:
            # Here, not at the top: snapd.core.inspect loads pyelftools' whole reader, start-up
            # time that snapd's own cores (classes in their note) never need.
            from snapd.core.inspect import segment_class

            i = bisect.bisect_left(sps, ld.start)
            inside = [sps[i]] if i < len(sps) and sps[i] < ld.end else []
            ld.cls = segment_class(ld.start, ld.end - ld.start, ld.flags, ld.file, facts.vdso, inside)
