"""Halting every thread of a live process with PTRACE_SEIZE + PTRACE_INTERRUPT.

Why not SIGSTOP / PTRACE_ATTACH: those put the process in a group-stop that its parent sees with
waitpid(WUNTRACED) and job control acts on, and a tracer that dies can leave it stopped.
A seized tracee stopped by PTRACE_INTERRUPT is in a ptrace-stop private to us; if we die, the
kernel detaches it and it runs on (kernel/ptrace.c exit_ptrace -> __ptrace_detach).
See ptrace(2) "Attaching and detaching" and "PTRACE_INTERRUPT".

Thread enumeration is race-free: we seize with PTRACE_O_TRACECLONE, so a thread created by a
seized thread is auto-attached and reported (PTRACE_EVENT_CLONE); threads created by
not-yet-seized threads are found by listing /proc/PID/task again until a full pass finds
nothing new (once every known thread is stopped, none can create another).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, field

from snapd import procfs
from snapd.errors import (
    AlreadyTraced,
    KernelThread,
    NotPermitted,
    SnapdError,
    TargetError,
    TargetGone,
    Zombie,
)
from snapd.sys import ptrace as pt
from snapd.sys.ptrace import Event, Opt

DEFAULT_TIMEOUT = 5.0
#: the pauses before asking again when ptrace refuses a live task (see _seize_again)
REFUSAL_RETRIES = (0.002, 0.005, 0.01, 0.02)


class FreezeTimeout(TargetError):
    def __init__(self, pid: int, tids: list[int], timeout: float) -> None:
        shown = ", ".join(map(str, tids[:8]))
        super().__init__(
            pid,
            f"thread(s) {shown} did not stop within {timeout:g}s (uninterruptible sleep?); "
            "target released untouched",
        )
        self.tids = tids


@dataclass
class Thread:
    """One halted thread and what it was doing when it stopped."""

    tid: int
    stopped: bool = False
    #: a signal whose delivery we intercepted; re-injected at detach so it is not lost
    pending_signal: int = 0
    #: the thread exited while we held it
    gone: bool = False
    #: PTRACE_EVENT_* of the stop we hold it in (STOP: our interrupt)
    event: int = 0


@dataclass
class Halted:
    """Every thread of ``pid`` halted; use as a context manager so resume() always runs."""

    pid: int
    threads: dict[int, Thread] = field(default_factory=dict)
    started_at: float = 0.0  # time.monotonic() when the first thread was seized
    resumed_at: float = 0.0
    wall_time: float = 0.0  # time.time() at halt

    @property
    def tids(self) -> list[int]:
        """Live threads, the thread-group leader first (it is the "current" thread of a core)."""
        live = [t.tid for t in self.threads.values() if not t.gone]
        return sorted(live, key=lambda t: (t != self.pid, t))

    @property
    def freeze_seconds(self) -> float:
        end = self.resumed_at or time.monotonic()
        return end - self.started_at if self.started_at else 0.0

    def resume(self) -> None:
        """Detach every thread (idempotent). Never raises for threads that have gone."""
        if self.resumed_at:
            return
        self.resumed_at = time.monotonic()
        release(self.threads)

    def __enter__(self) -> Halted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.resume()


def precheck(pid: int) -> procfs.Stat:
    """Refuse targets that cannot be dumped, before touching them."""
    st = procfs.stat(pid)
    if st.flags & procfs.PF_KTHREAD:
        raise KernelThread(pid, st.comm)
    if st.state in ("Z", "X") and st.num_threads <= 1:
        raise Zombie(pid, st.comm)
    tracer = int(procfs.status(pid).get("TracerPid", "0"))
    if tracer and tracer != os.getpid():
        raise AlreadyTraced(pid, tracer, procfs.comm(tracer))
    # /proc/PID/auxv needs the same ptrace access check as attaching (PTRACE_MODE_READ,
    # fs/proc/base.c proc_mem_open): learn "not permitted" before creating any file. Asked
    # again after a moment before it is believed: a check that meets an exec by another thread
    # can be refused for the dying leader (see _seize_again).
    for delay in (*REFUSAL_RETRIES, None):
        try:
            procfs.auxv(pid)
            break
        except NotPermitted as err:
            if delay is None:
                raise NotPermitted(pid) from err
            time.sleep(delay)
    return st


def halt(pid: int, timeout: float = DEFAULT_TIMEOUT) -> Halted:
    """Seize and stop every thread of ``pid``. On failure, everything seized is released."""
    precheck(pid)
    h = Halted(pid)
    h.started_at = time.monotonic()
    h.wall_time = time.time()
    try:
        _halt_all(h, timeout)
    except BaseException:
        h.resume()
        raise
    return h


def _traced_by_us(pid: int, tid: int) -> bool:
    try:
        return int(procfs.status(pid, tid).get("TracerPid", "0")) == os.getpid()
    except SnapdError:
        return False


def _task_is_zombie(pid: int, tid: int) -> bool:
    try:
        return procfs.stat(pid, tid).state in ("Z", "X")
    except SnapdError:
        return True


def _halt_all(h: Halted, timeout: float) -> None:
    pid = h.pid
    deadline = time.monotonic() + timeout
    while True:
        new = [t for t in procfs.tids(pid) if t not in h.threads]
        if not new:
            return
        for tid in new:
            # A zombie leader (main called pthread_exit) cannot be waited for until the whole
            # group exits (kernel/exit.c delay_group_leader): never seize it.
            if tid == pid and _task_is_zombie(pid, tid):
                h.threads[tid] = Thread(tid, gone=True)
                continue
            try:
                pt.seize(tid, Opt.TRACECLONE)
                pt.interrupt(tid)
            except OSError as err:
                if err.errno == errno.ESRCH:
                    if tid == pid:
                        raise TargetGone(pid, "attach") from err
                    continue  # the thread exited between listing and seizing
                if err.errno == errno.EPERM and _traced_by_us(pid, tid):
                    # Auto-attached by TRACECLONE; its PTRACE_EVENT_CLONE report is still queued.
                    h.threads[tid] = Thread(tid)
                    continue
                if err.errno == errno.EPERM:
                    tracer = int(procfs.status(pid).get("TracerPid", "0") or 0)
                    if tracer and tracer != os.getpid():
                        raise AlreadyTraced(pid, tracer, procfs.comm(tracer)) from err
                    # ptrace_attach refuses with EPERM a task whose exit has begun
                    # (task->exit_state, kernel/ptrace.c): that thread is gone, and so is
                    # the process when it is the leader (a leader that exited alone was
                    # left out above).
                    if _task_is_zombie(pid, tid):
                        if tid == pid:
                            raise TargetGone(pid, "attach") from err
                        continue
                    again = _seize_again(pid, tid)
                    if again == errno.ESRCH:
                        if tid == pid:
                            raise TargetGone(pid, "attach") from err
                        continue
                    if again != 0:
                        raise NotPermitted(pid) from err
                else:
                    raise
            h.threads[tid] = Thread(tid)
        _wait_stopped(h, deadline, timeout)


def _seize_again(pid: int, tid: int) -> int:
    """Seize ``tid`` again after an EPERM that neither another tracer nor a zombie explains;
    0 once seized, else the last errno. ptrace_attach refuses a task whose exit has begun
    (kernel/ptrace.c), and an exec by a thread other than the leader kills the leader and gives
    its pid to the exec'ing thread (fs/exec.c de_thread): by the time /proc/PID is read it is a
    live task again, which a second seize takes. A real refusal stays one (a few ms later)."""
    last = errno.EPERM
    for delay in REFUSAL_RETRIES:
        time.sleep(delay)
        try:
            pt.seize(tid, Opt.TRACECLONE)
            pt.interrupt(tid)
            return 0
        except OSError as err:
            last = err.errno or errno.EPERM
            if last != errno.EPERM:
                return last
            if _traced_by_us(pid, tid):  # the exec'ing thread, seized already, now has the pid
                return 0
    return last


def _wait_stopped(h: Halted, deadline: float, timeout: float) -> None:
    """Collect the stop of every seized thread, polling with WNOHANG up to ``deadline``.

    Polling rather than blocking: a thread in uninterruptible sleep (D) does not stop until it
    leaves it, and we must not hang on it with the others halted.
    """
    delay = 20e-6
    while True:
        waiting = [t for t in h.threads.values() if not t.stopped and not t.gone]
        if not waiting:
            return
        progressed = False
        for t in waiting:
            try:
                wpid, status = os.waitpid(t.tid, pt.WALL | os.WNOHANG)
            except ChildProcessError:
                t.gone = True  # exited and reaped by someone: nothing to release
                progressed = True
                continue
            if wpid == 0:
                continue
            progressed = True
            _note_stop(h, t, status)
        if progressed:
            delay = 20e-6
            continue
        if time.monotonic() > deadline:
            raise FreezeTimeout(h.pid, [t.tid for t in waiting], timeout)
        time.sleep(delay)
        delay = min(delay * 2, 2e-3)


def _note_stop(h: Halted, t: Thread, status: int) -> None:
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        t.gone = True
        if t.tid == h.pid:
            raise TargetGone(h.pid, "attach")
        return
    if not os.WIFSTOPPED(status):
        return
    sig = os.WSTOPSIG(status)
    event = pt.stop_event(status)
    t.stopped = True
    t.event = event
    if event == Event.CLONE:
        # The new thread is already traced by us (TRACECLONE); its own initial stop follows.
        child = pt.get_eventmsg(t.tid)
        if child not in h.threads:
            h.threads[child] = Thread(child)
    elif event == 0 and sig != pt.SIGTRAP:
        # A signal arrived before our interrupt: it is held in signal-delivery-stop. Keep it and
        # hand it back at detach (PTRACE_DETACH's data), so the target receives it as if we had
        # never been there.
        t.pending_signal = sig


def release(threads: dict[int, Thread], timeout: float = 2.0) -> list[int]:
    """Detach every seized thread; returns tids that could not be detached (should be none).

    A thread seized but not yet stopped cannot be detached (ptrace requests need a stopped
    tracee), so it is interrupted and collected first.
    """
    failed: list[int] = []
    dying: list[int] = []
    for t in threads.values():
        if t.gone:
            continue
        if not t.stopped:
            try:
                pt.interrupt(t.tid)
            except OSError as err:
                if err.errno == errno.ESRCH:
                    dying.append(t.tid)
                continue
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                try:
                    wpid, status = os.waitpid(t.tid, pt.WALL | os.WNOHANG)
                except ChildProcessError:
                    t.gone = True
                    break
                if wpid:
                    if os.WIFSTOPPED(status):
                        t.stopped = True
                        sig = os.WSTOPSIG(status)
                        if pt.stop_event(status) == 0 and sig != pt.SIGTRAP:
                            t.pending_signal = sig
                    else:
                        t.gone = True
                    break
                time.sleep(1e-4)
            if t.gone or not t.stopped:
                if not t.gone:
                    failed.append(t.tid)
                continue
        try:
            pt.detach(t.tid, t.pending_signal)
        except OSError as err:
            if err.errno != errno.ESRCH:
                failed.append(t.tid)
            else:
                dying.append(t.tid)  # SIGKILLed while we held it: out of its stop, exiting
        t.stopped = False
        t.gone = True
    _reap_dying(dying, timeout)
    return failed


def _reap_dying(tids: list[int], timeout: float) -> None:
    """Collect the exit of tracees that died while we held them.

    A traced task that exits becomes a zombie visible only to its tracer; its real parent's
    wait() does not see it until the tracer reaps it or detaches (kernel/exit.c
    wait_consider_task: "A zombie ptracee is only visible to its ptracer"), and PTRACE_DETACH of
    a dying tracee fails with ESRCH. So we must reap it ourselves, or a target SIGKILLed during a
    dump would stay a zombie its parent (systemd, a supervisor) never hears of, for as long as
    the daemon runs. All are polled together: a dead leader is reported only once its other
    threads are reaped (delay_group_leader).

    ESRCH from PTRACE_DETACH also means "not in a ptrace-stop" for a task that is alive and
    running: after an execve by another thread, the exec'ing thread takes over the leader's tid
    (fs/exec.c de_thread) and runs on, still our tracee. Such a task is interrupted, and
    detached at its stop: left traced, its next signal would stop it for good.
    """
    left = set(tids)
    interrupted: set[int] = set()
    end = time.monotonic() + timeout
    while left:
        for tid in list(left):
            try:
                wpid, status = os.waitpid(tid, pt.WALL | os.WNOHANG)
            except ChildProcessError:
                left.discard(tid)  # reaped already, or no longer ours
                continue
            if wpid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                left.discard(tid)
            elif wpid and os.WIFSTOPPED(status):
                try:  # a last stop on its way out, or the stop we asked for: let it go
                    pt.detach(tid, 0)
                    left.discard(tid)
                except OSError:
                    pass
            elif not wpid and tid not in interrupted:
                interrupted.add(tid)
                with contextlib.suppress(OSError):
                    pt.interrupt(tid)
        if not left or time.monotonic() > end:
            return
        time.sleep(1e-3)
