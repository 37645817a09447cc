"""The PT_NOTE contents: per-thread register notes and per-process notes.

Layouts are x86_64's (include/uapi/linux/elfcore.h, include/linux/elfcore.h); the order is
fs/binfmt_elf.c write_note_info's: the first thread's NT_PRSTATUS, then NT_PRPSINFO, NT_SIGINFO,
NT_AUXV, NT_FILE, then its NT_PRFPREG and NT_X86_XSTATE; every other thread NT_PRSTATUS,
NT_SIGINFO, NT_PRFPREG, NT_X86_XSTATE. gdb writes NT_SIGINFO per thread too (linux-tdep.c), and
BFD attaches each one to the thread of the NT_PRSTATUS before it. NT_X86_XSTATE is written
in Intel's component layout whatever the CPU (see :mod:`snapd.core.xsave`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from snapd import procfs
from snapd.core import xsave
from snapd.core.elf import NT, note
from snapd.procfs import Mapping
from snapd.sys import ptrace as pt

CORE = b"CORE"
LINUX = b"LINUX"
SNAPD = b"SNAPD"
#: our own note (readers skip owners they do not know): JSON with the content spec, the
#: snapshot mode and each PT_LOAD's content class, for `snapd inspect`.
NT_SNAPD_INFO = 0x534E4150  # "SNAP"

PRSTATUS_SIZE = 336
PRPSINFO_SIZE = 136
NT_FILE_MAX = 4 << 20  # fs/binfmt_elf.c MAX_FILE_NOTE_SIZE


@dataclass(frozen=True)
class ThreadRegs:
    """Everything the notes need of one halted thread, captured while it is stopped."""

    tid: int
    regs: bytes  # struct user_regs_struct (27 x u64): rip is [16], rsp [19], fs_base [21]
    fpregs: bytes  # FXSAVE area
    xstate: bytes  # XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) returns it
    siginfo: bytes  # 128 bytes; zeros when no signal was being delivered
    signal: int  # signal being delivered when we stopped it, else 0
    sigmask: int
    sigpend: int
    utime: int  # clock ticks
    stime: int

    def reg(self, index: int) -> int:
        return int(struct.unpack_from("<Q", self.regs, index * 8)[0])

    @property
    def pc(self) -> int:
        return self.reg(16)

    @property
    def sp(self) -> int:
        return self.reg(19)


def capture_thread(pid: int, tid: int, pending_signal: int) -> ThreadRegs:
    """Read a halted thread's registers and signal state (ptrace requests, /proc for times)."""
    regs = pt.get_regs(tid)
    fpregs = pt.get_fpregs(tid)
    try:
        xstate = pt.get_regset(tid, NT.X86_XSTATE, pt.XSTATE_MAX)
    except OSError as err:  # CPUs without XSAVE
        if err.errno not in (errno.EINVAL, errno.ENODEV, errno.EIO):
            raise
        xstate = b""
    siginfo = bytes(pt.SIGINFO_SIZE)
    if pending_signal:
        with contextlib.suppress(OSError):
            siginfo = pt.get_siginfo(tid)
    sigmask = pt.get_sigmask(tid)
    st = procfs.stat(pid, tid)
    status = procfs.status(pid, tid)
    sigpend = int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)
    return ThreadRegs(
        tid=tid,
        regs=regs,
        fpregs=fpregs,
        xstate=xstate,
        siginfo=siginfo,
        signal=pending_signal,
        sigmask=sigmask,
        sigpend=sigpend,
        utime=st.utime,
        stime=st.stime,
    )


@dataclass(frozen=True)
class ProcessInfo:
    """Per-process facts for NT_PRPSINFO and NT_PRSTATUS, read while halted."""

    pid: int
    ppid: int
    pgrp: int
    sid: int
    comm: str
    state: str  # one letter, as observed before the halt
    flags: int
    nice: int
    uid: int
    gid: int
    cmdline: bytes
    cutime: int
    cstime: int


def _timeval(ticks: int) -> bytes:
    usec = ticks * 1_000_000 // procfs.CLK_TCK
    return struct.pack("<qq", usec // 1_000_000, usec % 1_000_000)


def prstatus(t: ThreadRegs, p: ProcessInfo) -> bytes:
    """struct elf_prstatus (336 bytes on x86_64)."""
    head = struct.pack(
        "<iiih2xQQiiii",
        t.signal,  # pr_info.si_signo
        0,  # si_code
        0,  # si_errno
        t.signal,  # pr_cursig
        t.sigpend,
        t.sigmask,
        t.tid,  # pr_pid
        p.ppid,
        p.pgrp,
        p.sid,
    )
    times = _timeval(t.utime) + _timeval(t.stime) + _timeval(p.cutime) + _timeval(p.cstime)
    body = head + times + t.regs + struct.pack("<i4x", 1)  # pr_fpvalid
    assert len(body) == PRSTATUS_SIZE, len(body)
    return body


def prpsinfo(p: ProcessInfo) -> bytes:
    """struct elf_prpsinfo (136 bytes on x86_64); pr_psargs has argv's NULs turned to spaces."""
    states = "RSDTZW"
    i = states.index(p.state) if p.state in states else 0
    args = p.cmdline[:79].replace(b"\0", b" ").rstrip(b" ")
    body = struct.pack(
        "<bcbb4xQIIiiii16s80s",
        i,
        p.state.encode()[:1] or b"R",
        1 if p.state == "Z" else 0,
        max(-128, min(127, p.nice)),
        p.flags,
        p.uid,
        p.gid,
        p.pid,
        p.ppid,
        p.pgrp,
        p.sid,
        p.comm.encode("utf-8", "replace")[:15],
        args,
    )
    assert len(body) == PRPSINFO_SIZE, len(body)
    return body


def auxv(raw: bytes) -> bytes:
    """/proc/PID/auxv up to and including AT_NULL."""
    for off in range(0, len(raw) - 15, 16):
        if struct.unpack_from("<Q", raw, off)[0] == 0:
            return raw[: off + 16]
    return raw


def file_note(mappings: Iterable[Mapping]) -> bytes:
    """NT_FILE: count, page size, {start, end, pgoff-in-pages} per file mapping, then the names."""
    entries = []
    names = []
    for m in mappings:
        if not m.file_backed or not m.path.startswith("/"):
            continue
        entries.append(struct.pack("<QQQ", m.start, m.end, m.offset // procfs.PAGE_SIZE))
        names.append(m.path.encode("utf-8", "surrogateescape") + b"\0")
    out = struct.pack("<QQ", len(entries), procfs.PAGE_SIZE) + b"".join(entries) + b"".join(names)
    if len(out) > NT_FILE_MAX:  # the kernel drops the note rather than truncating it
        return b""
    return out


def snapd_info(info: dict[str, object]) -> bytes:
    return note(SNAPD, NT_SNAPD_INFO, json.dumps(info, separators=(",", ":")).encode())


def build(
    threads: list[ThreadRegs],
    proc: ProcessInfo,
    auxv_raw: bytes,
    mappings: list[Mapping],
    info: dict[str, object] | None = None,
) -> bytes:
    """The whole PT_NOTE segment, first thread first, our own note last."""
    out = []
    for i, t in enumerate(threads):
        out.append(note(CORE, NT.PRSTATUS, prstatus(t, proc)))
        if i == 0:
            out.append(note(CORE, NT.PRPSINFO, prpsinfo(proc)))
        out.append(note(CORE, NT.SIGINFO, t.siginfo))
        if i == 0:
            out.append(note(CORE, NT.AUXV, auxv(auxv_raw)))
            files = file_note(mappings)
            if files:
                out.append(note(CORE, NT.FILE, files))
        out.append(note(CORE, NT.PRFPREG, t.fpregs))
        if t.xstate:
            out.append(note(LINUX, NT.X86_XSTATE, xsave.intel_layout(t.xstate)))
    if info is not None:
        out.append(snapd_info(info))
    return b"".join(out)
