"""Would the target's seccomp filters let a given system call through?

A fork snapshot injects a ``clone`` into the target; a filter that kills or traps on it would
kill the target. Rather than guess, we fetch each attached classic-BPF filter
(PTRACE_SECCOMP_GET_FILTER, needs CAP_SYS_ADMIN) and run it on the exact ``seccomp_data`` the
kernel would build (include/uapi/linux/seccomp.h, kernel/seccomp.c seccomp_run_filters: the
most restrictive action of all filters wins).
"""

from __future__ import annotations

import ctypes
import errno
import struct
from enum import IntEnum

from snapd.sys import ptrace as pt

AUDIT_ARCH_X86_64 = 0xC000003E
MAX_INSNS = 4096  # BPF_MAXINSNS


class Action(IntEnum):
    """SECCOMP_RET_* (the action part, mask 0xffff0000)."""

    KILL_PROCESS = 0x80000000
    KILL_THREAD = 0x00000000
    TRAP = 0x00030000
    ERRNO = 0x00050000
    USER_NOTIF = 0x7FC00000
    TRACE = 0x7FF00000
    LOG = 0x7FFC0000
    ALLOW = 0x7FFF0000


#: Actions after which the target is unharmed: the call runs, or fails with an errno we see
#: (TRACE without a PTRACE_O_TRACESECCOMP tracer fails with ENOSYS).
HARMLESS = frozenset({Action.ALLOW, Action.LOG, Action.ERRNO, Action.TRACE})


class FilterUnreadable(Exception):
    pass


def filters(tid: int) -> list[list[tuple[int, int, int, int]]]:
    """Every filter attached to ``tid``, newest first, as (code, jt, jf, k) tuples."""
    out: list[list[tuple[int, int, int, int]]] = []
    for index in range(1024):
        try:
            n = pt.ptrace(pt.Req.SECCOMP_GET_FILTER, tid, index, 0)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return out
            raise FilterUnreadable(str(err)) from err
        buf = ctypes.create_string_buffer(8 * n)
        pt.ptrace(pt.Req.SECCOMP_GET_FILTER, tid, index, ctypes.addressof(buf))
        out.append([struct.unpack_from("<HBBI", buf.raw, 8 * i) for i in range(n)])
    raise FilterUnreadable("too many filters")


def seccomp_data(nr: int, ip: int, args: tuple[int, ...]) -> bytes:
    a = [*args, 0, 0, 0, 0, 0, 0][:6]
    return struct.pack("<iIQ6Q", nr, AUDIT_ARCH_X86_64, ip, *(x & (2**64 - 1) for x in a))


def run_filter(prog: list[tuple[int, int, int, int]], data: bytes) -> int:
    """Interpret one classic-BPF seccomp program; return its 32-bit result."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    m32 = 0xFFFFFFFF
    for _ in range(MAX_INSNS + 1):
        if pc >= len(prog):
            raise FilterUnreadable("ran off the end of the filter")
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # BPF_LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS (seccomp only allows 32-bit words)
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == 0x00:
                a = k
            elif mode == 0x60:
                a = mem[k]
            elif mode == 0x80:
                a = len(data)
            else:
                raise FilterUnreadable(f"unsupported load {code:#x}")
        elif cls == 0x01:  # BPF_LDX
            mode = code & 0xE0
            x = k if mode == 0x00 else mem[k] if mode == 0x60 else len(data)
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # BPF_ALU
            src = x if code & 0x08 else k
            op = code & 0xF0
            if op in (0x30, 0x90) and src == 0:
                # A classic program dividing by X == 0 returns 0 at once (net/core/filter.c
                # bpf_convert_filter); by K == 0 it is refused at load (bpf_check_classic).
                return 0
            if op == 0x00:
                a = (a + src) & m32
            elif op == 0x10:
                a = (a - src) & m32
            elif op == 0x20:
                a = (a * src) & m32
            elif op == 0x30:
                a = a // src
            elif op == 0x40:
                a |= src
            elif op == 0x50:
                a &= src
            elif op == 0x60:
                # 32-bit shifts by X use the count's low 5 bits (kernel/bpf/core.c, the JITs);
                # K >= 32 is refused at load.
                a = (a << (src & 31)) & m32
            elif op == 0x70:
                a = a >> (src & 31)
            elif op == 0x80:
                a = (-a) & m32
            elif op == 0x90:
                a = a % src
            elif op == 0xA0:
                a ^= src
            else:
                raise FilterUnreadable(f"unsupported alu {code:#x}")
        elif cls == 0x05:  # BPF_JMP
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:
                pc += k
                continue
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}.get(op)
            if cond is None:
                raise FilterUnreadable(f"unsupported jump {code:#x}")
            pc += jt if cond else jf
        elif cls == 0x06:  # BPF_RET
            return (a if code & 0x18 == 0x10 else k) & m32
        elif cls == 0x07:  # BPF_MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    raise FilterUnreadable("filter did not return")


def action_of(result: int) -> int:
    return result & 0xFFFF0000 if result & 0x80000000 == 0 else Action.KILL_PROCESS


def allows(tid: int, nr: int, ip: int, args: tuple[int, ...]) -> tuple[bool, str]:
    """(harmless?, reason) for system call ``nr`` made by ``tid`` at ``ip`` with ``args``."""
    try:
        progs = filters(tid)
    except FilterUnreadable as err:
        return False, f"its seccomp filters cannot be read ({err})"
    data = seccomp_data(nr, ip, args)
    for prog in progs:
        try:
            act = action_of(run_filter(prog, data))
        except (FilterUnreadable, struct.error, IndexError) as err:
            return False, f"a seccomp filter could not be evaluated ({err})"
        if act not in HARMLESS:
            try:
                name = Action(act).name
            except ValueError:
                name = hex(act)
            return False, f"a seccomp filter would answer clone() with {name}"
    return True, ""
