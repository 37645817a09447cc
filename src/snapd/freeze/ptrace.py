"""Thin ctypes bindings: ptrace(2), process_vm_readv(2), waitpid status decoding.

Every call raises ``OSError`` with the real errno; callers turn it into typed errors.
ptrace is per thread: every request for a tracee must come from the OS thread that seized it.
"""

from __future__ import annotations

import ctypes
import os
import struct
from enum import IntEnum, IntFlag

# glibc's soname, not ctypes.util.find_library("c"): that runs ldconfig -p, ~12 ms at each start.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long


class Req(IntEnum):
    """include/uapi/linux/ptrace.h and arch/x86/include/uapi/asm/ptrace-abi.h"""

    CONT = 7
    DETACH = 17
    GETREGS = 12
    SETREGS = 13
    GETFPREGS = 14
    SYSCALL = 24
    SETOPTIONS = 0x4200
    GETEVENTMSG = 0x4201
    GETSIGINFO = 0x4202
    GETREGSET = 0x4204
    SETREGSET = 0x4205
    SEIZE = 0x4206
    INTERRUPT = 0x4207
    LISTEN = 0x4208
    GETSIGMASK = 0x420A
    SETSIGMASK = 0x420B
    SECCOMP_GET_FILTER = 0x420C


class Opt(IntFlag):
    TRACESYSGOOD = 0x01
    TRACEFORK = 0x02
    TRACEVFORK = 0x04
    TRACECLONE = 0x08
    TRACEEXEC = 0x10
    TRACEEXIT = 0x40
    EXITKILL = 1 << 20  # only ever for a fork snapshot's child, never for a target


class Event(IntEnum):
    NONE = 0
    FORK = 1
    VFORK = 2
    CLONE = 3
    EXEC = 4
    EXIT = 6
    STOP = 128


class NT(IntEnum):
    """Note types (include/uapi/linux/elf.h); also the regset selectors for PTRACE_GETREGSET."""

    PRSTATUS = 1
    PRFPREG = 2
    PRPSINFO = 3
    AUXV = 6
    X86_XSTATE = 0x202
    SIGINFO = 0x53494749
    FILE = 0x46494C45


WALL = 0x40000000  # __WALL: wait for threads (clone children) too, see wait(2)
SIGTRAP = 5
USER_REGS_SIZE = 27 * 8  # struct user_regs_struct, arch/x86/include/asm/user_64.h
FPREGS_SIZE = 512  # struct user_i387_struct (FXSAVE area)
SIGINFO_SIZE = 128
XSTATE_MAX = 64 * 1024  # the kernel truncates to the buffer passed; be generous


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def ptrace(req: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    r = int(_ptrace(req, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data)))
    if r == -1:
        e = ctypes.get_errno()
        if e:
            raise OSError(e, f"ptrace({Req(req).name}, {tid}): {os.strerror(e)}")
    return r


def seize(tid: int, options: int) -> None:
    ptrace(Req.SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    ptrace(Req.INTERRUPT, tid)


def detach(tid: int, sig: int = 0) -> None:
    ptrace(Req.DETACH, tid, 0, sig)


def cont(tid: int, sig: int = 0) -> None:
    ptrace(Req.CONT, tid, 0, sig)


def syscall_step(tid: int, sig: int = 0) -> None:
    ptrace(Req.SYSCALL, tid, 0, sig)


def _get_into(req: int, tid: int, size: int, addr: int = 0) -> bytes:
    buf = ctypes.create_string_buffer(size)
    ptrace(req, tid, addr, ctypes.addressof(buf))
    return buf.raw


def get_regs(tid: int) -> bytes:
    return _get_into(Req.GETREGS, tid, USER_REGS_SIZE)


def set_regs(tid: int, regs: bytes) -> None:
    buf = ctypes.create_string_buffer(regs, USER_REGS_SIZE)
    ptrace(Req.SETREGS, tid, 0, ctypes.addressof(buf))


def get_fpregs(tid: int) -> bytes:
    return _get_into(Req.GETFPREGS, tid, FPREGS_SIZE)


def get_regset(tid: int, nt: int, maxsize: int) -> bytes:
    buf = ctypes.create_string_buffer(maxsize)
    iov = _IoVec(ctypes.addressof(buf), maxsize)
    ptrace(Req.GETREGSET, tid, nt, ctypes.addressof(iov))
    return buf.raw[: iov.iov_len]


def get_siginfo(tid: int) -> bytes:
    return _get_into(Req.GETSIGINFO, tid, SIGINFO_SIZE)


def get_sigmask(tid: int) -> int:
    buf = ctypes.create_string_buffer(8)
    ptrace(Req.GETSIGMASK, tid, 8, ctypes.addressof(buf))
    return int(struct.unpack("<Q", buf.raw)[0])


def set_sigmask(tid: int, mask: int) -> None:
    buf = ctypes.create_string_buffer(struct.pack("<Q", mask), 8)
    ptrace(Req.SETSIGMASK, tid, 8, ctypes.addressof(buf))


def get_eventmsg(tid: int) -> int:
    buf = ctypes.create_string_buffer(8)
    ptrace(Req.GETEVENTMSG, tid, 0, ctypes.addressof(buf))
    return int(struct.unpack("<Q", buf.raw)[0])


# --- wait status -------------------------------------------------------------------------------


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a ptrace-stop status (0 for a signal-delivery-stop)."""
    return (status >> 16) & 0xFF


# --- process_vm_readv ----------------------------------------------------------------------------

_pvr = _libc.process_vm_readv
_pvr.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_pvr.restype = ctypes.c_ssize_t

IOV_MAX = 1024


def process_vm_readv(pid: int, pairs: list[tuple[int, int, int]]) -> int:
    """Copy ``[(local_addr, remote_addr, length), ...]`` (at most IOV_MAX) from ``pid``.

    Returns the bytes copied; the copy stops at the first remote page that cannot be read
    (mm/process_vm_access.c stops at the first failed page and reports the partial count).
    """
    n = len(pairs)
    local = (_IoVec * n)()
    remote = (_IoVec * n)()
    for i, (laddr, raddr, length) in enumerate(pairs):
        local[i].iov_base = laddr
        local[i].iov_len = length
        remote[i].iov_base = raddr
        remote[i].iov_len = length
    r = int(_pvr(pid, local, n, remote, n, 0))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"process_vm_readv({pid}): {os.strerror(e)}")
    return r


# --- memory mapping of the output file -----------------------------------------------------------

_mmap = _libc.mmap
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_munmap.restype = ctypes.c_int
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_fallocate.restype = ctypes.c_int

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED = 1
MAP_PRIVATE = 2
MAP_ANONYMOUS = 0x20
MAP_FAILED = ctypes.c_void_p(-1).value


def mmap_file(fd: int, offset: int, length: int) -> int:
    addr = _mmap(None, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset)
    if addr is None or addr == MAP_FAILED:
        e = ctypes.get_errno()
        raise OSError(e, f"mmap: {os.strerror(e)}")
    return int(addr)


def mmap_anon(length: int) -> int:
    addr = _mmap(None, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr is None or addr == MAP_FAILED:
        e = ctypes.get_errno()
        raise OSError(e, f"mmap: {os.strerror(e)}")
    return int(addr)


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"munmap: {os.strerror(e)}")


def fallocate(fd: int, offset: int, length: int) -> None:
    """Reserve blocks (mode 0) so that later writes through a mapping cannot SIGBUS on ENOSPC."""
    if _fallocate(fd, 0, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
