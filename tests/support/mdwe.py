"""systemd's MemoryDenyWriteExecute=yes filter, loaded with libseccomp through ctypes.

Same rules as seccomp_memory_deny_write_execute() in systemd's src/shared/seccomp-util.c:
EPERM for mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, and
shmat with SHM_EXEC. Seccomp filters are inherited across fork and execve (seccomp(2)).
"""

from __future__ import annotations

import ctypes
import errno

PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_MASKED_EQ = 7


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def load_systemd_mdwe() -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_Arg),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")

    def rule(name: str, argno: int, mask: int) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        arg = _Arg(argno, _MASKED_EQ, mask, mask)
        rc = lib.seccomp_rule_add_array(ctx, _ERRNO | errno.EPERM, nr, 1, ctypes.byref(arg))
        if rc != 0:
            raise OSError(-rc, f"seccomp_rule_add {name}")

    rule("mmap", 2, PROT_WRITE | PROT_EXEC)
    rule("mprotect", 2, PROT_EXEC)
    rule("pkey_mprotect", 2, PROT_EXEC)
    rule("shmat", 2, SHM_EXEC)
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load")
