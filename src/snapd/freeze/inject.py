"""Making a halted target run one system call of ours: the fork snapshot's clone, then wait4.

The thread's registers and signal mask are saved, all signals blocked (PTRACE_SETSIGMASK), rip
pointed at a ``syscall`` instruction in its [vdso], and the call stepped through with
PTRACE_SYSCALL (enter-stop, PTRACE_EVENT_CLONE, exit-stop). ``orig_rax = -1`` keeps the kernel's
syscall-restart logic away from our call (arch/x86/kernel/signal.c arch_do_signal_or_restart).

Restoring is subtle: the thread may have been halted inside an interrupted system call (read,
nanosleep...), its rax holding -ERESTART*. Resumed from the original ptrace stop, the kernel would
restart that call; resumed from our syscall-exit-stop it would not, and the program would see
errno 512. So we do the restart ourselves when restoring: rax = orig_rax (or restart_syscall for
-ERESTART_RESTARTBLOCK), rip -= 2, orig_rax = -1.

Between moving the registers and restoring them, the tracer must not stop: a tracer that exits
then leaves the thread running from the injected state (kernel/ptrace.c exit_ptrace detaches it
as it is): rip after a [vdso] ``syscall``, every signal blocked, the clone's result in rax where
the program expects its own call's. SIGINT, SIGTERM and SIGHUP are therefore held
(:func:`signals_held`) until the thread is restored; SIGKILL cannot be, which is why the daemon
does its dumps in a separate process (:mod:`snapd.daemon.dumper`) that outlives it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from snapd import procfs
from snapd.errors import SnapdError, TargetError, TargetGone
from snapd.sys import ptrace as pt
from snapd.sys.ptrace import Event, Opt

# struct user_regs_struct indexes
R10, R9, R8, RAX, RDX, RSI, RDI, ORIG_RAX, RIP = 7, 8, 9, 10, 12, 13, 14, 15, 16
MASK64 = (1 << 64) - 1

NR_CLONE = 56
NR_WAIT4 = 61
NR_RESTART_SYSCALL = 219
CLONE_FILES = 0x00000400
WALL_WNOHANG = 0x40000000 | 0x1  # __WALL | WNOHANG

ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
SYSCALL_STOP = signal.SIGTRAP | 0x80  # with PTRACE_O_TRACESYSGOOD


class InjectError(TargetError):
    """The injected call could not be made; the thread was restored."""


#: The signals a tracer's user sends to stop it (^C, kill, systemctl stop, a lost terminal).
HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

#: Called with (tid, nr) at the syscall-enter-stop of every injected call, the thread holding
#: our registers: tests use it to kill a tracer at exactly that moment.
on_call_entered: Callable[[int, int], None] | None = None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold :data:`HELD_SIGNALS` until the target is whole again, then deliver what arrived.

    Blocking them in this thread is not enough: a process-directed signal goes to any thread
    that leaves it unblocked (signal(7)), e.g. a copy thread started earlier, and Python then
    runs its handler in the main thread at the next bytecode, in the middle of an injected call.
    So, in the main thread, Python handlers are also replaced by a recorder for the duration,
    and the signals recorded are raised again on the way out."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    deferred: list[int] = []
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in HELD_SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):
                saved[sig] = handler
                signal.signal(sig, lambda n, _f: deferred.append(n))
    try:
        yield
    finally:
        for held, handler in saved.items():
            signal.signal(held, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for n in deferred:
            signal.raise_signal(n)


def _signed(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def unpack(regs: bytes) -> list[int]:
    return list(struct.unpack("<27Q", regs))


def pack(r: list[int]) -> bytes:
    return struct.pack("<27Q", *(v & MASK64 for v in r))


def resumable(regs: bytes) -> bytes:
    """Registers to restore after an injection, with a pending syscall restart done by hand."""
    r = unpack(regs)
    orig, ret = _signed(r[ORIG_RAX]), _signed(r[RAX])
    if orig >= 0 and -ret in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND):
        r[RAX] = orig
        r[RIP] -= 2
        r[ORIG_RAX] = MASK64
    elif orig >= 0 and -ret == ERESTART_RESTARTBLOCK:
        r[RAX] = NR_RESTART_SYSCALL
        r[RIP] -= 2
        r[ORIG_RAX] = MASK64
    return pack(r)


def find_syscall_insn(pid: int, vdso_start: int, vdso_end: int) -> int | None:
    """Address of a ``syscall`` (0f 05) instruction in the target's [vdso]."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, vdso_end - vdso_start, vdso_start)
    except OSError:
        return None
    finally:
        os.close(fd)
    i = data.find(b"\x0f\x05")
    return vdso_start + i if i >= 0 else None


def _dying(tid: int) -> bool:
    """Has thread ``tid`` exited (a zombie, or gone)? /proc/TID is there for any thread id; the
    thread's own state, not the process's: a main thread that called pthread_exit leaves the
    process "Z" while other threads, the one we inject into among them, run on."""
    try:
        return procfs.stat(tid).state in ("Z", "X")
    except SnapdError:
        return True


def wait_stop(pid: int, tid: int, timeout: float = 5.0) -> int:
    """Wait for ``tid``'s next stop (or death), polling so that a stuck thread cannot hang us."""
    start = time.monotonic()
    end = start + timeout
    delay = 10e-6
    while True:
        try:
            wpid, status = os.waitpid(tid, pt.WALL | os.WNOHANG)
        except ChildProcessError as err:
            raise TargetGone(pid, "the snapshot") from err
        if wpid:
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise TargetGone(pid, "the snapshot")
            return status
        # A thread SIGKILLed now may never report this stop: a dead group leader is reported
        # only once its other threads, ours to reap, are gone (kernel/exit.c
        # delay_group_leader). Its own zombie state tells, within milliseconds: the target
        # exited, which is not a thread that "did not stop" after the full timeout.
        now = time.monotonic()
        if now - start > 0.02 and _dying(tid):
            raise TargetGone(pid, "the snapshot")
        if now > end:
            raise InjectError(pid, f"thread {tid} did not stop in the injected system call")
        time.sleep(delay)
        delay = min(delay * 2, 1e-3)


JOBCTL_TRAPS = 8  # a SIGCONT/SIGSTOP pair gives at most a couple; more means something is wrong


def _step_past_jobctl(pid: int, tid: int, status: int) -> int:
    """Step over job-control traps met on the way into or out of the injected call.

    A seized thread reports group-stops, and the SIGCONT that ends one, as PTRACE_EVENT_STOP
    traps (kernel/signal.c ptrace_trap_notify, do_jobctl_trap; ptrace(2) "group-stop"). The
    daemon's ``stop: kernel`` targets always have one queued: the probe SIGSTOPs them, we seize
    them stopped, then SIGCONT them. Such a trap is taken in get_signal() before the thread
    returns to user mode, so no user instruction has run: PTRACE_SYSCALL again and the thread
    goes on into (or out of) our system call.
    """
    for _ in range(JOBCTL_TRAPS):
        if pt.stop_event(status) != Event.STOP:
            return status
        pt.syscall_step(tid)
        status = wait_stop(pid, tid)
    return status


def inject(
    pid: int, tid: int, saved_regs: bytes, insn: int, nr: int, args: tuple[int, ...]
) -> tuple[int, int | None]:
    """Run system call ``nr(args)`` in halted thread ``tid``; return (result, traced child or None).

    The thread is left halted, registers and signal mask as they were (see module docstring),
    whatever signal reaches us meanwhile (:func:`signals_held`).
    """
    with signals_held():
        return _inject(pid, tid, saved_regs, insn, nr, args)


def _inject(
    pid: int, tid: int, saved_regs: bytes, insn: int, nr: int, args: tuple[int, ...]
) -> tuple[int, int | None]:
    saved_mask = pt.get_sigmask(tid)
    moved = False
    child: int | None = None
    r = unpack(saved_regs)
    r[RIP] = insn
    r[RAX] = nr
    r[ORIG_RAX] = MASK64
    for reg, val in zip((RDI, RSI, RDX, R10, R8, R9), (*args, 0, 0, 0, 0, 0, 0), strict=False):
        r[reg] = val
    try:
        pt.set_sigmask(tid, MASK64)
        pt.ptrace(pt.Req.SETOPTIONS, tid, 0, Opt.TRACECLONE | Opt.TRACESYSGOOD)
        pt.set_regs(tid, pack(r))
        moved = True
        pt.syscall_step(tid)
        status = _step_past_jobctl(pid, tid, wait_stop(pid, tid))
        if os.WSTOPSIG(status) != SYSCALL_STOP:
            raise InjectError(pid, f"thread {tid} stopped with {status:#x} instead of entering the call")
        if on_call_entered is not None:
            on_call_entered(tid, nr)
        pt.syscall_step(tid)
        while True:
            status = _step_past_jobctl(pid, tid, wait_stop(pid, tid))
            if pt.stop_event(status) in (Event.CLONE, Event.FORK, Event.VFORK):
                child = pt.get_eventmsg(tid)
                pt.syscall_step(tid)
                continue
            if os.WSTOPSIG(status) == SYSCALL_STOP:
                break
            raise InjectError(pid, f"thread {tid} stopped with {status:#x} inside the injected call")
        result = _signed(unpack(pt.get_regs(tid))[RAX])
    finally:
        with contextlib.suppress(OSError):
            pt.set_regs(tid, resumable(saved_regs) if moved else saved_regs)
            pt.set_sigmask(tid, saved_mask)
            pt.ptrace(pt.Req.SETOPTIONS, tid, 0, Opt.TRACECLONE)
    return result, child


def reap_in_target(pid: int, child_vpid: int, insn: int, tids: list[int]) -> bool:
    """Make the target reap our dead child: halt one of its threads for a wait4(..., WNOHANG).

    The child was created with exit signal 0, so the target got no SIGCHLD and its plain wait()
    never sees it (__WALL or __WCLONE is needed, kernel/exit.c eligible_child); but its zombie is
    the target's child until reaped. Only one thread is halted, for a millisecond or two.
    """
    for tid in tids:
        try:
            pt.seize(tid, 0)
        except OSError as err:
            if err.errno in (errno.ESRCH, errno.EPERM):
                continue
            raise
        try:
            pt.interrupt(tid)
            status = wait_stop(pid, tid)
            sig = os.WSTOPSIG(status) if pt.stop_event(status) == 0 else 0
            if sig and sig != signal.SIGTRAP:
                pt.detach(tid, sig)  # a signal is being delivered here: try another thread
                continue
            regs = pt.get_regs(tid)
            ret, _ = inject(pid, tid, regs, insn, NR_WAIT4, (child_vpid, 0, WALL_WNOHANG, 0))
            pt.detach(tid, 0)
            return ret == child_vpid
        except (SnapdError, OSError):
            with contextlib.suppress(OSError):
                pt.detach(tid, 0)
            continue
    return False
