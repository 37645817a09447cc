"""The child's own confinement, applied to itself before it touches its input.

Two steps, because the job's module must still be importable (by path) when it is loaded:

- :func:`early`: die with the parent (PR_SET_PDEATHSIG), lowest CPU and I/O priority, rlimits
  (CPU, address space, file size, open files, no core dumps);
- :func:`lock_down`: as root, become ``limits.user`` (no supplementary groups, optionally
  keeping CAP_DAC_READ_SEARCH and nothing else, bounding set emptied), no_new_privs, then
  Landlock: read-only beneath the allowed paths, no writes, no TCP, signals scoped.

Returns a one-line account of what was applied (the kernel may lack Landlock: it says so).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import resource
import signal
import struct
from collections.abc import Iterable

from snapd.sandbox import landlock
from snapd.sandbox.limits import Limits

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = 126  # x86_64
_SYS_IOPRIO_SET = 251  # x86_64
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3


class ConfineError(OSError):
    pass


def _prctl(option: int, arg: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise ConfineError(e, f"prctl({option}): {os.strerror(e)}")


def early(limits: Limits, parent: int) -> None:
    """Everything that does not depend on the job: before the job's module is even imported."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above: nobody waits for us
        os._exit(1)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), limits.nice))
    if limits.idle_io:
        # ioprio_set(2): IOPRIO_PRIO_VALUE(class, data) = class << 13 | data
        _libc.syscall(_SYS_IOPRIO_SET, _IOPRIO_WHO_PROCESS, 0, _IOPRIO_CLASS_IDLE << 13)
    _rlimit(resource.RLIMIT_CORE, 0)
    _rlimit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
    _rlimit(resource.RLIMIT_AS, limits.address_space)
    _rlimit(resource.RLIMIT_FSIZE, limits.file_size)
    _rlimit(resource.RLIMIT_NOFILE, limits.open_files)


def _rlimit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower a limit (never raise one the parent already lowered further)."""
    _soft, cur_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
    soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def lock_down(limits: Limits, extra_read: Iterable[str | int] = ()) -> str:
    """Drop privileges, then confine file access with Landlock; what was done, in one line."""
    done = []
    keep_cap = limits.keep_read_cap and landlock.abi() > 0
    if os.geteuid() == 0:
        pw = pwd.getpwnam(limits.user)
        _become(pw.pw_uid, pw.pw_gid, keep_cap)
        done.append(f"user {limits.user}" + (" (+CAP_DAC_READ_SEARCH)" if keep_cap else ""))
    else:
        done.append(f"uid {os.getuid()}")
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    done.append("no_new_privs")
    if landlock.abi():
        # /proc/self: its own status, maps and fds (a library may reopen an fd it was given)
        read = [*limits.read_paths, f"/proc/{os.getpid()}", *extra_read]
        done.append(landlock.restrict(read, limits.write_paths, limits.network))
    else:
        done.append("no landlock (kernel lacks it): file access is the user's")
    return "; ".join(done)


def _become(uid: int, gid: int, keep_read_cap: bool) -> None:
    last = int(open("/proc/sys/kernel/cap_last_cap").read())  # noqa: SIM115 (tiny, closed by GC)
    for cap in range(last + 1):
        if cap != CAP_DAC_READ_SEARCH or not keep_read_cap:
            with contextlib.suppress(ConfineError):  # EINVAL for caps this kernel lacks
                _prctl(PR_CAPBSET_DROP, cap)
    with contextlib.suppress(ConfineError):
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if keep_read_cap:
        _prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if keep_read_cap:
        # capset(2) with _LINUX_CAPABILITY_VERSION_3: two {effective, permitted, inheritable}
        bit = 1 << CAP_DAC_READ_SEARCH
        header = ctypes.create_string_buffer(struct.pack("<Ii", _LINUX_CAPABILITY_VERSION_3, 0), 8)
        data = ctypes.create_string_buffer(struct.pack("<6I", bit, bit, 0, 0, 0, 0), 24)
        if _libc.syscall(_SYS_CAPSET, header, data) != 0:
            e = ctypes.get_errno()
            raise ConfineError(e, f"capset: {os.strerror(e)}")
        _prctl(PR_SET_KEEPCAPS, 0)
    if os.getuid() != uid or os.geteuid() != uid:
        raise ConfineError(0, "setresuid did not take")
