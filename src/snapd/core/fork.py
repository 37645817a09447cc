"""Fork snapshots: the target halted only long enough to fork a copy-on-write child.

The child (docs/fork-snapshot.md):
- is made by injecting ``clone(CLONE_FILES, exit signal 0)`` into one halted thread: no SIGCHLD,
  invisible to the target's plain wait() (it needs __WALL/__WCLONE), and no second fd table
  holding the target's files open;
- is born traced (PTRACE_O_TRACECLONE) and halted, with PTRACE_O_EXITKILL so that it cannot
  outlive snapd, and never runs a user instruction;
- is read through /proc/CHILD/mem, which does not pin pages: process_vm_readv would, and pinning
  a COW-shared page forces a copy of it (mm/gup.c, FOLL_PIN on an anonymous page);
- is SIGKILLed and reaped by us, and its zombie then reaped by the target through one more
  injected wait4(WNOHANG) in a short halt of a single thread.

What a fork does not carry over is copied from the halted parent: MADV_DONTFORK mappings (absent
in the child) and MADV_WIPEONFORK ones (zero in the child). Shared mappings are the same pages
in both: copied from the child they are live, not a snapshot, unless the spec has ``haltshared``.
"""

from __future__ import annotations

import contextlib
import os
import signal

from snapd import procfs
from snapd.content import ContentSpec
from snapd.core.snapshot import Snapshot
from snapd.errors import SnapdError
from snapd.freeze import Halted, inject, seccomp
from snapd.procfs import Mapping
from snapd.sys import ptrace as pt
from snapd.sys.ptrace import Event, Opt

CLONE_ARGS = (inject.CLONE_FILES, 0, 0, 0, 0)  # flags (exit signal 0), stack, ptid, ctid, tls
RETRIES = 3
EAGAIN, ENOMEM, ERESTARTNOINTR = 11, 12, 513


class ForkUnsafe(SnapdError):
    """A fork snapshot cannot be taken safely; the reason is the message."""


def needs_parent(m: Mapping, spec: ContentSpec) -> bool:
    """Copy this mapping from the halted parent rather than from the child?"""
    if m.vmflags & {"dc", "wf"}:  # VM_DONTCOPY (MADV_DONTFORK), VM_WIPEONFORK
        return True
    return m.shared and spec.mentions("haltshared")


class SnapshotChild:
    """The copy-on-write child of a fork snapshot: traced, halted, never runs user code.

    ``insn`` is the target's ``syscall`` instruction and ``tids`` its threads: what
    :meth:`dispose` needs to have the target reap the child.
    """

    def __init__(self, target: int, pid: int, vpid: int, insn: int, tids: list[int]) -> None:
        self.target = target
        self.pid = pid  # in our pid namespace
        self.vpid = vpid  # in the target's, for its wait4
        self.insn = insn
        self.tids = tids
        self.reaped = False

    def adopt(self) -> None:
        """Collect the child's first stop, and make sure it dies with us (PTRACE_O_EXITKILL):
        were snapd to die, a detached child would run the target's code a second time."""
        status = inject.wait_stop(self.target, self.pid)
        if not os.WIFSTOPPED(status):
            raise inject.InjectError(self.target, "the snapshot child did not start")
        pt.ptrace(pt.Req.SETOPTIONS, self.pid, 0, Opt.EXITKILL | Opt.TRACECLONE)

    def kill(self) -> None:
        """SIGKILL and wait. Its zombie then belongs to the target: see :meth:`dispose`."""
        if self.reaped:
            return
        self.reaped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while True:
                _, status = os.waitpid(self.pid, pt.WALL)
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    break

    def dispose(self) -> None:
        """Kill the child and have the target reap it; leaves no zombie, sends no SIGCHLD."""
        self.kill()
        with contextlib.suppress(SnapdError, OSError):
            inject.reap_in_target(self.target, self.vpid, self.insn, self.tids)


def _uses_userfaultfd(pid: int) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True  # cannot tell: assume the worst
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]":
                return True
    return False


def _injection_thread(h: Halted) -> int | None:
    """A thread halted by our interrupt with no signal in flight, the main thread preferred."""
    for tid in h.tids:
        t = h.threads[tid]
        if t.stopped and not t.gone and t.event == Event.STOP and not t.pending_signal:
            return tid
    return None


def fork_child(h: Halted, snap: Snapshot, spec: ContentSpec) -> SnapshotChild:
    """Fork the halted target; raise ForkUnsafe (target untouched) when that is not safe."""
    pid = h.pid
    if snap.proc.state == "T":
        raise ForkUnsafe("the target is stopped by job control")
    vdso = next((m for m in snap.mappings if m.path == "[vdso]"), None)
    insn = inject.find_syscall_insn(pid, vdso.start, vdso.end) if vdso else None
    if insn is None:
        raise ForkUnsafe("no syscall instruction found in its [vdso]")
    tid = _injection_thread(h)
    if tid is None:
        raise ForkUnsafe("no thread is in a state where a system call can be injected")
    mode = procfs.status(pid).get("Seccomp", "0")
    if mode == "1":
        raise ForkUnsafe("it runs in seccomp strict mode, where clone() kills")
    if mode == "2":
        ok, why = seccomp.allows(tid, inject.NR_CLONE, insn, CLONE_ARGS)
        if not ok:
            raise ForkUnsafe(why)
    if _uses_userfaultfd(pid):
        raise ForkUnsafe("it uses userfaultfd, whose fork events could deadlock")
    regs = next(t.regs for t in snap.threads if t.tid == tid)
    # Held from the clone until the child has PTRACE_O_EXITKILL: a tracer that exits in between
    # would detach a child that then runs the target's code a second time.
    with inject.signals_held():
        for _ in range(RETRIES):
            ret, child_pid = inject.inject(pid, tid, regs, insn, inject.NR_CLONE, CLONE_ARGS)
            if ret > 0 and child_pid:
                sc = SnapshotChild(pid, child_pid, ret, insn, h.tids)
                try:
                    sc.adopt()
                except BaseException:
                    sc.kill()
                    inject.reap_in_target(pid, ret, insn, [tid])
                    raise
                return sc
            if ret != -ERESTARTNOINTR:  # a signal raced the clone: try again
                break
    reasons = {
        -EAGAIN: "EAGAIN: RLIMIT_NPROC or pids.max reached",
        -ENOMEM: "ENOMEM: memory overcommit refused",
    }
    why = reasons.get(ret) or (os.strerror(-ret) if ret < 0 else f"returned {ret}")
    raise ForkUnsafe(f"clone() failed in the target ({why})")


def _ns_level_pid(pid: int, level: int) -> int | None:
    """``pid`` as seen in the pid namespace ``level`` deep (/proc/PID/status NSpid)."""
    try:
        ns = procfs.status(pid).get("NSpid", "").split()
        return int(ns[level]) if len(ns) > level else None
    except (SnapdError, ValueError):
        return None


def orphans(target: int) -> list[int]:
    """Zombie children of ``target`` created with exit signal 0 (/proc/PID/stat field 38): what
    a fork snapshot leaves when its tracer dies before the target could reap the child."""
    out: list[int] = []
    try:
        tids = procfs.tids(target)
    except SnapdError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{target}/task/{tid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            continue
        for kid in kids:
            try:
                with open(f"/proc/{kid}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rindex(b")") + 2 :].split()
            if fields[0] == b"Z" and len(fields) > 35 and int(fields[35]) == 0:
                out.append(kid)
    return sorted(set(out))


def reap_orphans(target: int) -> int:
    """Have ``target`` reap the :func:`orphans` it holds (one short halt of one thread each,
    as :meth:`SnapshotChild.dispose`); returns how many it reaped."""
    kids = orphans(target)
    if not kids:
        return 0
    vdso = next((m for m in procfs.maps(target) if m.path == "[vdso]"), None)
    insn = inject.find_syscall_insn(target, vdso.start, vdso.end) if vdso else None
    if insn is None:
        return 0
    level = len(procfs.status(target).get("NSpid", "x").split()) - 1
    reaped = 0
    for kid in kids:
        vpid = _ns_level_pid(kid, level)
        if vpid is not None and inject.reap_in_target(target, vpid, insn, procfs.tids(target)):
            reaped += 1
    return reaped
