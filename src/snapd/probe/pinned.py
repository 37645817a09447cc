"""The ``stopped`` map pinned in bpffs: every process ``stop: kernel`` stopped, outliving a daemon.

The probe records each process it SIGSTOPs (tgid -> the moment, CLOCK_BOOTTIME) in the kernel,
before the daemon hears of it; the daemon deletes the entry once it has resumed the process or
taken it over. Pinned (bpf(2) BPF_OBJ_PIN), the map survives a daemon killed at any instant, so
the next start resumes exactly the processes the probe stopped and nobody resumed, and never a
recycled pid: /proc/PID/stat's starttime counts clock ticks on the same boot-based clock
(fs/proc/array.c do_task_stat, nsec_to_clock_t), and the process that holds a pid now is the
one that was stopped if and only if it started before the stop.

Each state directory has its own pin directory below :data:`BPFFS_ROOT`: daemons on other state
directories (tests, a second instance) never resume each other's targets.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import hashlib
import os
from typing import Any

BPFFS_ROOT = "/sys/fs/bpf/snapd-cores"
STOPPED = "stopped"
NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class PinError(OSError):
    """bpffs is missing or refuses the pin (mount it: mount -t bpf bpf /sys/fs/bpf)."""


def pin_dir_for(state_dir: str) -> str:
    """The pin directory of the daemon that owns ``state_dir``."""
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:16]
    return os.path.join(BPFFS_ROOT, digest)


def ticks(boottime_ns: int) -> int:
    """A CLOCK_BOOTTIME instant in /proc/PID/stat starttime's clock ticks."""
    return boottime_ns // NS_PER_TICK


def _lib() -> Any:
    try:
        from bcc import lib  # libbcc links libbpf, which exports the object calls
    except ImportError as err:
        raise PinError(errno.ENOSYS, f"bcc is not importable: {err}") from err

    lib.bpf_obj_pin.restype = ct.c_int
    lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
    lib.bpf_obj_get.restype = ct.c_int
    lib.bpf_obj_get.argtypes = [ct.c_char_p]
    return lib


def _err(ret: int, what: str) -> PinError:
    e = -ret if ret < -1 else ct.get_errno() or errno.EIO
    return PinError(e, f"{what}: {os.strerror(e)}")


def pin(map_fd: int, pin_dir: str) -> str:
    """Pin ``map_fd`` as PIN_DIR/stopped, replacing what a previous daemon left there."""
    try:
        os.makedirs(pin_dir, mode=0o700, exist_ok=True)
    except OSError as err:
        raise PinError(err.errno, f"{pin_dir}: {err.strerror} (is bpffs mounted on /sys/fs/bpf?)") from err
    path = os.path.join(pin_dir, STOPPED)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    ret = _lib().bpf_obj_pin(map_fd, path.encode())
    if ret < 0:
        raise _err(ret, f"pin {path}")
    return path


def read(pin_dir: str) -> dict[int, int]:
    """The processes a previous daemon's probe stopped: pid -> when, in starttime ticks."""
    path = os.path.join(pin_dir, STOPPED)
    if not os.path.exists(path):
        return {}
    lib = _lib()
    fd = lib.bpf_obj_get(path.encode())
    if fd < 0:
        raise _err(fd, f"open {path}")
    out: dict[int, int] = {}
    try:
        key, nxt, val = ct.c_uint32(), ct.c_uint32(), ct.c_uint64()
        prev: Any = None
        while lib.bpf_get_next_key(fd, prev, ct.byref(nxt)) == 0:
            key.value = nxt.value
            if lib.bpf_lookup_elem(fd, ct.byref(key), ct.byref(val)) == 0:
                out[int(key.value)] = ticks(int(val.value))
            prev = ct.byref(key)
    finally:
        os.close(fd)
    return out


def unpin(pin_dir: str) -> None:
    """Remove the pin (a clean shutdown: nothing is left stopped)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(pin_dir, STOPPED))
    with contextlib.suppress(OSError):
        os.rmdir(pin_dir)
