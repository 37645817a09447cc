"""What is in a core file (ours, the kernel's or gdb's), read with pyelftools: threads, notes,
segments and their content classes. The ``snapd inspect`` command is snapd/inspect.py."""

from __future__ import annotations

import json
import os
import signal
import struct
from dataclasses import dataclass, field
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from snapd.core.elf import NT
from snapd.core.notes import NT_SNAPD_INFO
from snapd.errors import SnapdError
from snapd.text import safe

AT_SYSINFO_EHDR = 33
_NT_NAMES = {int(v): f"NT_{v.name}" for v in NT} | {
    NT_SNAPD_INFO: "NT_SNAPD_INFO",
    0x205: "NT_X86_XSAVE_LAYOUT",
}


class CoreFileError(SnapdError):
    def __init__(self, path: str, msg: str) -> None:
        super().__init__(f"{path}: {msg}")
        self.path = path


@dataclass
class ThreadView:
    tid: int
    signal: int
    pc: int
    sp: int


@dataclass
class SegmentView:
    start: int
    end: int
    perms: str
    filesz: int
    cls: str
    file: str = ""


@dataclass
class CoreView:
    path: str
    pid: int = 0
    comm: str = ""
    psargs: str = ""
    apparent_size: int = 0
    disk_bytes: int = 0
    notes: dict[str, int] = field(default_factory=dict)
    threads: list[ThreadView] = field(default_factory=list)
    segments: list[SegmentView] = field(default_factory=list)
    snapd: dict[str, Any] = field(default_factory=dict)
    needed_size: int = 0  # where the last segment's data ends: more than apparent_size if cut short
    cut_segments: int = 0  # segments whose data runs past the end of the file


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_core(path: str) -> CoreView:
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors are ours)
    except OSError as err:
        raise CoreFileError(path, err.strerror or str(err)) from err
    with f:
        st = os.fstat(f.fileno())
        view = CoreView(path, apparent_size=st.st_size, disk_bytes=st.st_blocks * 512)
        try:
            elf = ELFFile(f)
            if elf.header["e_type"] != "ET_CORE":
                raise CoreFileError(path, f"not a core file (ELF type {elf.header['e_type']})")
            files: dict[int, str] = {}
            vdso = 0
            loads = []
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_NOTE":
                    for n in seg.iter_notes():  # type: ignore[attr-defined]
                        raw: bytes = n["n_descdata"]
                        ntype = _type_number(n["n_type"])
                        key = _NT_NAMES.get(ntype, f"{n['n_name']}:{ntype:#x}")
                        view.notes[key] = view.notes.get(key, 0) + 1
                        if ntype == NT.PRSTATUS and n["n_name"] == "CORE":
                            cursig = struct.unpack_from("<h", raw, 12)[0]
                            tid = struct.unpack_from("<i", raw, 32)[0]
                            regs = struct.unpack_from("<27Q", raw, 112)
                            view.threads.append(ThreadView(tid, cursig, regs[16], regs[19]))
                        elif ntype == NT.PRPSINFO and n["n_name"] == "CORE":
                            view.pid = struct.unpack_from("<i", raw, 24)[0]
                            view.comm = _cstr(raw[40:56])
                            view.psargs = _cstr(raw[56:136])
                        elif ntype == NT.FILE:
                            files = _parse_nt_file(raw)
                        elif ntype == NT.AUXV:
                            for i in range(0, len(raw) - 15, 16):
                                k, v = struct.unpack_from("<QQ", raw, i)
                                if k == AT_SYSINFO_EHDR:
                                    vdso = v
                        elif ntype == NT_SNAPD_INFO and n["n_name"] == "SNAPD":
                            view.snapd = json.loads(raw)
                elif seg["p_type"] == "PT_LOAD":
                    loads.append(seg)
        except ELFError as err:
            raise CoreFileError(path, f"not a valid ELF core: {err}") from err
    classes = view.snapd.get("classes", [])
    sps = [t.sp for t in view.threads]
    for i, seg in enumerate(loads):
        start, size, flags = seg["p_vaddr"], seg["p_memsz"], seg["p_flags"]
        perms = ("r" if flags & 4 else "-") + ("w" if flags & 2 else "-") + ("x" if flags & 1 else "-")
        fname = files.get(start, "")
        cls = classes[i] if i < len(classes) else segment_class(start, size, flags, fname, vdso, sps)
        view.segments.append(SegmentView(start, start + size, perms, seg["p_filesz"], cls, fname))
        if seg["p_filesz"]:
            end = seg["p_offset"] + seg["p_filesz"]
            view.needed_size = max(view.needed_size, end)
            view.cut_segments += end > view.apparent_size
    return view


def segment_class(start: int, size: int, flags: int, fname: str, vdso: int, sps: list[int]) -> str:
    """The content class of a PT_LOAD of a core without snapd's note (the kernel's, gdb's), from
    what the notes tell: the vdso address (AT_SYSINFO_EHDR), the NT_FILE name, the threads' stack
    pointers. The brk heap cannot be told apart from other anonymous memory this way."""
    if start == vdso:
        return "vdso"
    if fname:
        return "text" if flags & 1 else ("data" if flags & 2 else "rodata")
    if any(start <= sp < start + size for sp in sps):
        return "stack"
    return "anon"


def _type_number(t: object) -> int:
    if isinstance(t, int):
        return t
    for k, v in _NT_NAMES.items():
        if v == t:
            return k
    names = {"NT_FPREGSET": NT.PRFPREG, "NT_PRXFPREG": 0x46E62B7F, "NT_GNU_BUILD_ID": 3}
    return int(names.get(str(t), -1))


def _parse_nt_file(raw: bytes) -> dict[int, str]:
    count, _page = struct.unpack_from("<QQ", raw, 0)
    entries = [struct.unpack_from("<QQQ", raw, 16 + 24 * i) for i in range(count)]
    names = raw[16 + 24 * count :].split(b"\0")
    return {e[0]: names[i].decode("utf-8", "replace") for i, e in enumerate(entries) if i < len(names)}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _signame(sig: int) -> str:
    if not sig:
        return "-"
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def render(v: CoreView) -> str:
    out = [
        f"{safe(v.path)}: core of pid {v.pid} ({safe(v.comm)}), {len(v.threads)} thread(s)",
        f"  command:  {safe(v.psargs)}",
        f"  size:     {_size(v.apparent_size)} apparent, {_size(v.disk_bytes)} on disk",
    ]
    if v.snapd:
        content, snapshot = safe(v.snapd.get("content")), safe(v.snapd.get("snapshot"))
        out.append(f"  snapd:    content '{content}', snapshot {snapshot}")
        if v.snapd.get("shared_live"):
            out.append("  note:     shared mappings were copied live, after the freeze (fork snapshot)")
    if v.cut_segments:
        out.append(
            f"  warning:  truncated: the file ends at {_size(v.apparent_size)} but its segments need "
            f"{_size(v.needed_size)} ({v.cut_segments} of {len(v.segments)} cut short: an interrupted "
            "dump or copy)"
        )
    out.append("  notes:    " + ", ".join(safe(k) + (f" x{c}" if c > 1 else "") for k, c in v.notes.items()))
    out.append("")
    out.append(f"  {'TID':>8}  {'SIGNAL':<8}  {'PC':<18}  SP")
    for t in v.threads:
        out.append(f"  {t.tid:>8}  {_signame(t.signal):<8}  {t.pc:#018x}  {t.sp:#018x}")
    out.append("")
    out.append(f"  {'START':<14} {'END':<14} {'PERM':<4} {'SIZE':>10} {'DUMPED':>10} {'CLASS':<8} FILE")
    for s in v.segments:
        out.append(
            f"  {s.start:014x} {s.end:014x} {s.perms:<4} {_size(s.end - s.start):>10} "
            f"{_size(s.filesz) if s.filesz else '-':>10} {safe(s.cls):<8} {safe(s.file)}"
        )
    return "\n".join(out)
