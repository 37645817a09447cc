"""The seccomp cBPF emulator (snapd.freeze.seccomp.run_filter) on hand-assembled programs.

Every instruction class, with its expected result worked out by hand and, for the programs the
kernel accepts, checked against the kernel itself: a child loads the same program as its
seccomp filter (no root: PR_SET_NO_NEW_PRIVS) and makes the system call, and what the kernel
did (ran it, failed it with an errno, killed the child) must be what the emulator predicts. A
fork snapshot trusts this emulator to keep a filter from killing the target. Then the bounds:
loads and scratch memory out of range, programs that run off their end or never return.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct

import pytest

from snapd.freeze.seccomp import (
    AUDIT_ARCH_X86_64,
    MAX_INSNS,
    Action,
    FilterUnreadable,
    action_of,
    run_filter,
    seccomp_data,
)

Insn = tuple[int, int, int, int]

# include/uapi/linux/bpf_common.h, filter.h: class | size | mode, class | op | source
LD_W_ABS, LD_W_LEN, LD_IMM, LD_MEM = 0x20, 0x80, 0x00, 0x60
LDX_IMM, LDX_MEM, LDX_W_LEN = 0x01, 0x61, 0x81
ST, STX = 0x02, 0x03
ALU, BPF_X = 0x04, 0x08
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0,
)  # fmt: skip
JA, JEQ, JGT, JGE, JSET = 0x05, 0x15, 0x25, 0x35, 0x45
RET_K, RET_A = 0x06, 0x16
TAX, TXA = 0x07, 0x87

ALLOW = int(Action.ALLOW)
GETPID = 39  # x86_64
ARGS = (1, 2, 3, 4, 5, 6)
IP = 0x7F00_1234_5678
DATA = seccomp_data(GETPID, IP, ARGS)


def stmt(code: int, k: int = 0) -> Insn:
    return (code, 0, 0, k)


def jump(code: int, k: int, jt: int, jf: int) -> Insn:
    return (code, jt, jf, k)


def errno_ret(n: int) -> Insn:
    return stmt(RET_K, int(Action.ERRNO) | n)


#: Every program starts here: only getpid is filtered, every other system call is let through
#: (so that the child that loads it can still exit).
PROLOGUE: list[Insn] = [stmt(LD_W_ABS, 0), jump(JEQ, GETPID, 1, 0), stmt(RET_K, ALLOW)]


def program(*body: Insn) -> list[Insn]:
    return [*PROLOGUE, *body]


def a_is(value: int) -> list[Insn]:
    """The tail of a check: allow if A == value, else fail with EPERM."""
    return [jump(JEQ, value, 0, 1), stmt(RET_K, ALLOW), errno_ret(errno.EPERM)]


def if_true(code: int, k: int) -> list[Insn]:
    """A conditional jump whose true branch allows and false branch fails with EPERM."""
    return [jump(code, k, 0, 1), stmt(RET_K, ALLOW), errno_ret(errno.EPERM)]


def if_false(code: int, k: int) -> list[Insn]:
    return [jump(code, k, 1, 0), stmt(RET_K, ALLOW), errno_ret(errno.EPERM)]


def alu(op: int, a: int, src: int, *, x: bool) -> list[Insn]:
    if x:
        return [stmt(LD_IMM, a), stmt(LDX_IMM, src), stmt(ALU | BPF_X | op)]
    return [stmt(LD_IMM, a), stmt(ALU | op, src)]


M32 = 0xFFFFFFFF
ALU_CASES = [
    # (name, op, A, operand, A afterwards)
    ("add", ADD, 7, 5, 12),
    ("add-wraps", ADD, M32, 2, 1),
    ("sub", SUB, 7, 10, (7 - 10) & M32),
    ("mul-wraps", MUL, 0x1000_0000, 16, 0),
    ("div", DIV, 7, 2, 3),
    ("or", OR, 7, 8, 15),
    ("and", AND, 7, 3, 3),
    ("lsh", LSH, 7, 4, 112),
    ("lsh-out", LSH, 0x8000_0001, 1, 2),
    ("rsh", RSH, 0x8000_0000, 31, 1),
    ("xor", XOR, 7, 5, 2),
]

#: (name, program, result) for programs the kernel loads: checked by hand and against it
CASES: list[tuple[str, list[Insn], int]] = [
    ("ret-k", program(stmt(RET_K, ALLOW)), ALLOW),
    ("ret-errno", program(errno_ret(errno.EACCES)), int(Action.ERRNO) | errno.EACCES),
    ("ret-kill", program(stmt(RET_K, int(Action.KILL_PROCESS))), int(Action.KILL_PROCESS)),
    ("ret-trace", program(stmt(RET_K, int(Action.TRACE))), int(Action.TRACE)),
    ("ret-log", program(stmt(RET_K, int(Action.LOG))), int(Action.LOG)),
    ("ret-a", program(stmt(LD_IMM, int(Action.ERRNO) | 13), stmt(RET_A)), int(Action.ERRNO) | 13),
    ("ld-arch", program(stmt(LD_W_ABS, 4), *a_is(AUDIT_ARCH_X86_64)), ALLOW),
    ("ld-arg2", program(stmt(LD_W_ABS, 16 + 2 * 8), *a_is(3)), ALLOW),
    ("ld-arg5-high", program(stmt(LD_W_ABS, 16 + 5 * 8 + 4), *a_is(0)), ALLOW),
    ("ld-arg-mismatch", program(stmt(LD_W_ABS, 16), *a_is(2)), int(Action.ERRNO) | errno.EPERM),
    ("ld-len", program(stmt(LD_W_LEN), *a_is(64)), ALLOW),
    ("ldx-len", program(stmt(LDX_W_LEN), stmt(TXA), *a_is(64)), ALLOW),
    ("tax-txa", program(stmt(LD_IMM, 9), stmt(TAX), stmt(LD_IMM, 0), stmt(TXA), *a_is(9)), ALLOW),
    ("st-ld-mem", program(stmt(LD_IMM, 77), stmt(ST, 3), stmt(LD_IMM, 0), stmt(LD_MEM, 3), *a_is(77)), ALLOW),
    ("stx-ldx-mem", program(stmt(LDX_IMM, 5), stmt(STX, 15), stmt(LDX_MEM, 15), stmt(TXA), *a_is(5)), ALLOW),
    ("neg", program(stmt(LD_IMM, 7), stmt(ALU | NEG), *a_is((-7) & M32)), ALLOW),
    *[(f"alu-{n}-k", program(*alu(op, a, s, x=False), *a_is(r)), ALLOW) for n, op, a, s, r in ALU_CASES],
    *[(f"alu-{n}-x", program(*alu(op, a, s, x=True), *a_is(r)), ALLOW) for n, op, a, s, r in ALU_CASES],
    # the kernel ends a program that divides by X == 0 with 0 (KILL_THREAD), whatever follows
    ("div-x-zero", program(*alu(DIV, 5, 0, x=True), stmt(LD_IMM, ALLOW), stmt(RET_A)), 0),
    # and shifts by X by its low five bits
    ("lsh-x-33", program(*alu(LSH, 1, 33, x=True), *a_is(2)), ALLOW),
    ("rsh-x-36", program(*alu(RSH, 0x100, 36, x=True), *a_is(0x10)), ALLOW),
    ("ja", program(stmt(JA, 1), errno_ret(1), stmt(RET_K, ALLOW)), ALLOW),
    ("jeq-false", program(stmt(LD_IMM, 4), *if_false(JEQ, 5)), ALLOW),
    ("jgt-unsigned", program(stmt(LD_IMM, M32), *if_true(JGT, 1)), ALLOW),
    ("jgt-equal", program(stmt(LD_IMM, 5), *if_false(JGT, 5)), ALLOW),
    ("jge-equal", program(stmt(LD_IMM, 5), *if_true(JGE, 5)), ALLOW),
    ("jset", program(stmt(LD_IMM, 6), *if_true(JSET, 4)), ALLOW),
    ("jset-none", program(stmt(LD_IMM, 6), *if_false(JSET, 1)), ALLOW),
    ("jeq-x", program(stmt(LD_IMM, 8), stmt(LDX_IMM, 8), *if_true(JEQ | BPF_X, 0)), ALLOW),
    ("jgt-x", program(stmt(LD_IMM, 9), stmt(LDX_IMM, 8), *if_true(JGT | BPF_X, 0)), ALLOW),
    ("jge-x", program(stmt(LD_IMM, 7), stmt(LDX_IMM, 8), *if_false(JGE | BPF_X, 0)), ALLOW),
    ("jset-x", program(stmt(LD_IMM, 3), stmt(LDX_IMM, 2), *if_true(JSET | BPF_X, 0)), ALLOW),
    # systemd's MemoryDenyWriteExecute shape: arg2 & (PROT_WRITE|PROT_EXEC) == both -> EPERM
    ("masked-arg", program(stmt(LD_W_ABS, 16 + 2 * 8), stmt(ALU | AND, 0x6), *if_false(JEQ, 0x6)), ALLOW),
]


@pytest.mark.parametrize(("name", "prog", "result"), CASES, ids=[c[0] for c in CASES])
def test_result_worked_out_by_hand(name: str, prog: list[Insn], result: int) -> None:
    assert run_filter(prog, DATA) == result


def test_ip_and_nr_are_where_the_kernel_puts_them() -> None:
    nr, arch, ip = struct.unpack_from("<iIQ", DATA)
    assert (nr, arch, ip) == (GETPID, AUDIT_ARCH_X86_64, IP)
    assert run_filter(program(stmt(LD_W_ABS, 8), *a_is(IP & M32)), DATA) == ALLOW
    assert run_filter(program(stmt(LD_W_ABS, 12), *a_is(IP >> 32)), DATA) == ALLOW
    # negative arguments are their two's complement, as the kernel stores a u64
    neg = seccomp_data(GETPID, 0, (-1,))
    assert run_filter(program(stmt(LD_W_ABS, 20), *a_is(M32)), neg) == ALLOW
    # another system call falls through the prologue
    assert run_filter(program(errno_ret(1)), seccomp_data(GETPID + 1, 0, ())) == ALLOW


def test_what_the_kernel_would_refuse_is_still_defined() -> None:
    """seccomp_check_filter() has no BPF_MOD, and bpf_check_classic() refuses a read of scratch
    memory never written: no attached filter does either, but the emulator stays total."""
    assert run_filter(program(stmt(LD_IMM, 1), stmt(LD_MEM, 7), *a_is(0)), DATA) == ALLOW
    assert run_filter(program(*alu(MOD, 7, 4, x=False), *a_is(3)), DATA) == ALLOW
    assert run_filter(program(*alu(MOD, 7, 0, x=True), stmt(RET_K, ALLOW)), DATA) == 0


def test_action_of() -> None:
    assert action_of(ALLOW) == Action.ALLOW
    assert action_of(int(Action.ERRNO) | 1234) == Action.ERRNO
    assert action_of(int(Action.TRAP) | 7) == Action.TRAP
    assert action_of(0) == Action.KILL_THREAD
    assert action_of(0x8000_0000) == Action.KILL_PROCESS
    assert action_of(0xFFFF_FFFF) == Action.KILL_PROCESS  # any value with the top bit


@pytest.mark.parametrize(
    ("prog", "error"),
    [
        (program(stmt(LD_W_ABS, 64), stmt(RET_K, ALLOW)), struct.error),  # past seccomp_data
        (program(stmt(LD_W_ABS, 62), stmt(RET_K, ALLOW)), struct.error),  # straddles its end
        (program(stmt(LD_MEM, 16), stmt(RET_K, ALLOW)), IndexError),  # BPF_MEMWORDS is 16
        (program(stmt(ST, 16), stmt(RET_K, ALLOW)), IndexError),
        (program(stmt(LDX_MEM, 99), stmt(RET_K, ALLOW)), IndexError),
    ],
)
def test_out_of_range_is_an_error_not_a_verdict(prog: list[Insn], error: type[Exception]) -> None:
    """The kernel refuses these at load; the emulator raises (allows() then says the filter
    could not be evaluated, and no fork snapshot is tried)."""
    with pytest.raises(error):
        run_filter(prog, DATA)


@pytest.mark.parametrize(
    ("prog", "message"),
    [
        (program(stmt(LD_IMM, 1)), "ran off the end"),
        (program(stmt(JA, 5), stmt(RET_K, ALLOW)), "ran off the end"),
        (program(stmt(JA, M32), stmt(RET_K, ALLOW)), "ran off the end"),  # no jump goes back
        (program(jump(JEQ, 0, 0, 200), stmt(RET_K, ALLOW)), "ran off the end"),
        ([stmt(LD_IMM, 0)] * (MAX_INSNS + 8) + [stmt(RET_K, ALLOW)], "did not return"),
        (program(stmt(0x40), stmt(RET_K, ALLOW)), "unsupported load"),  # BPF_IND
        (program(stmt(ALU | 0xB0), stmt(RET_K, ALLOW)), "unsupported alu"),
        (program(jump(0x55, 0, 0, 0), stmt(RET_K, ALLOW)), "unsupported jump"),
    ],
)
def test_runaway_and_unknown_programs_are_refused(prog: list[Insn], message: str) -> None:
    with pytest.raises(FilterUnreadable, match=message):
        run_filter(prog, DATA)


def test_longest_loadable_program_returns() -> None:
    prog = [stmt(LD_IMM, 0)] * (MAX_INSNS - 1) + [stmt(RET_K, ALLOW)]
    assert len(prog) == MAX_INSNS and run_filter(prog, DATA) == ALLOW


# --- the kernel's own answer --------------------------------------------------------------


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_LOAD_REFUSED = 3
_SYS_SECCOMP = 317  # x86_64
_PR_SET_NO_NEW_PRIVS = 38


def kernel_outcome(prog: list[Insn]) -> str:
    """What the kernel does with getpid(1, 2, 3, 4, 5, 6) under ``prog`` as seccomp filter, in a
    child: "allowed", "errno N", "signal N", or "refused at load"."""
    libc = ctypes.CDLL(None, use_errno=True)
    raw = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *i) for i in prog))
    fprog = _SockFprog(len(prog), ctypes.addressof(raw))
    pid = os.fork()
    if pid == 0:  # the child makes no call but these before _exit
        code = _LOAD_REFUSED
        try:
            # every argument a full register: syscall() and prctl() are variadic
            long = ctypes.c_long
            if (
                libc.prctl(_PR_SET_NO_NEW_PRIVS, long(1), long(0), long(0), long(0)) == 0
                and libc.syscall(long(_SYS_SECCOMP), long(1), long(0), ctypes.byref(fprog)) == 0
            ):
                r = libc.syscall(long(GETPID), *map(long, ARGS))
                code = 0 if r > 0 else 10 + min(ctypes.get_errno(), 200)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status)
    return {0: "allowed", _LOAD_REFUSED: "refused at load"}.get(code, f"errno {code - 10}")


def predicted(result: int) -> str:
    """What the kernel does with a filter's ``result`` (kernel/seccomp.c __seccomp_filter)."""
    act = action_of(result)
    if act in (Action.ALLOW, Action.LOG):
        return "allowed"
    if act == Action.ERRNO:
        return f"errno {min(result & 0xFFFF, 4095)}"
    if act in (Action.TRACE, Action.USER_NOTIF):  # nobody traces or listens: -ENOSYS
        return f"errno {errno.ENOSYS}"
    return f"signal {int(signal.SIGSYS)}"  # KILL_*, TRAP (unhandled) and unknown actions


def _kernel_filters_work() -> bool:
    return kernel_outcome(program(stmt(RET_K, ALLOW))) == "allowed"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the programs are for x86_64 syscall numbers")
@pytest.mark.parametrize(("name", "prog", "result"), CASES, ids=[c[0] for c in CASES])
def test_the_kernel_agrees(name: str, prog: list[Insn], result: int) -> None:
    if not _kernel_filters_work():
        pytest.skip("this kernel does not let an unprivileged process load a seccomp filter")
    assert run_filter(prog, DATA) == result
    assert kernel_outcome(prog) == predicted(result)
