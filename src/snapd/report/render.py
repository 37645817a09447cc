"""A report as text, like ``coredumpctl info`` (systemd src/shared/elf-util.c), and its WHERE.

    Stack trace of thread 4711 (nginx) [fired the rule]:
      at the event:
    #0  0x00007f3c2a8e1b5d __libc_open64 (libc.so.6 + 0xf7b5d)
    #1  0x000055d0c8b2d1a4 ngx_open_cached_file (nginx + 0x5a1a4)
      at the snapshot:
    #0  0x00007f3c2a8f0e26 epoll_wait (libc.so.6 + 0x106e26)
    ...
    Python stack (holds the GIL):
        hold_gil_main (/srv/app.py:20)

    Module /usr/sbin/nginx from deb nginx-core 1.22.1-9 (amd64), build-id 1c3f...

Everything the target chose (names, paths) goes through :func:`snapd.text.safe`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from snapd.text import safe

#: libc's blocking calls and syscall wrappers, the stdio calls that block on them, and their
#: internal helpers (glibc 2.31-2.40): a thread parked in one of these is better described by
#: its caller
WAIT_WRAPPERS = frozenset(
    """
    epoll_wait epoll_pwait epoll_pwait2 poll ppoll __poll select pselect __select pselect6
    read __libc_read __GI___libc_read __read_nocancel write __libc_write __GI___libc_write
    pread64 __libc_pread64 pwrite64 readv writev recv __libc_recv recvfrom __libc_recvfrom
    recvmsg __libc_recvmsg send __libc_send sendto sendmsg accept accept4 __libc_accept connect
    __libc_connect nanosleep __nanosleep __GI___nanosleep clock_nanosleep __clock_nanosleep
    __GI___clock_nanosleep __clock_nanosleep_time64 sleep usleep pause __libc_pause
    sigwait sigwaitinfo sigtimedwait __sigtimedwait sigsuspend __sigsuspend
    wait wait4 __wait4 waitpid __waitpid waitid syscall __syscall_cancel_arch __syscall_cancel
    __internal_syscall_cancel __futex_abstimed_wait_common __futex_abstimed_wait_common64
    __GI___futex_abstimed_wait_cancelable64 __futex_abstimed_wait_cancelable64 futex_wait
    __futex_lock_pi64 futex_wait_simple __lll_lock_wait __lll_lock_wait_private
    __pthread_cond_wait pthread_cond_wait ___pthread_cond_wait __pthread_cond_wait_common
    __pthread_cond_timedwait pthread_cond_timedwait ___pthread_cond_timedwait
    __pthread_cond_clockwait pthread_cond_clockwait ___pthread_cond_clockwait
    __pthread_mutex_lock pthread_mutex_lock ___pthread_mutex_lock lll_mutex_lock_optimized
    __pthread_clockjoin_ex pthread_join ___pthread_join __pthread_rwlock_rdlock
    __pthread_rwlock_wrlock do_futex_wait __new_sem_wait_slow __new_sem_wait_slow64 sem_wait
    __new_sem_wait sem_timedwait sem_clockwait msgrcv semop semtimedop io_getevents
    flock fcntl fcntl64 __libc_fcntl64 lockf __GI___poll __GI___select __GI_epoll_wait
    __GI___libc_pause fgets fgets_unlocked fread fread_unlocked getline getdelim getc fgetc
    getc_unlocked getchar gets fscanf scanf fwrite fwrite_unlocked fputs puts fflush fprintf
    printf vfprintf fputc putc putchar
    """.split()  # noqa: SIM905 (a word list reads better than 120 quoted strings)
)
_SYSCALL_SOURCES = ("../sysdeps/unix/", "./sysdeps/unix/", "sysdeps/unix/")
_LIBC = re.compile(r"(^|/)(libc|libpthread|ld-linux[^/]*|libc\.musl[^/]*)\.so")


def _module_name(path: str | None) -> str:
    return os.path.basename(path) if path else "n/a"


def frame_line(n: int, f: Mapping[str, Any]) -> str:
    """``#N 0xPC function (module + 0xOFF)``, with `` at FILE:LINE`` where debug info says."""
    fn = safe(f.get("function") or "n/a")
    off = f.get("offset")
    where = f"{safe(_module_name(f.get('module')))} + {off:#x}" if off is not None else "n/a"
    line = f"#{n:<2} 0x{f['pc']:016x} {fn} ({where})"
    if f.get("inline"):
        line += " [inlined]"
    if f.get("file"):
        line += f" at {safe(f['file'])}:{f.get('line') or '?'}"
    return line


def _frames(out: list[str], frames: list[Mapping[str, Any]], truncated: bool, limit_note: str) -> None:
    for n, f in enumerate(frames):
        out.append(frame_line(n, f))
    if truncated:
        out.append(f"    ... more frames not shown{limit_note}")


def render_thread(t: Mapping[str, Any]) -> list[str]:
    name = f" ({safe(t['name'])})" if t.get("name") else ""
    mark = " [fired the rule]" if t.get("firing") else ""
    out = [f"Stack trace of thread {t['tid']}{name}{mark}:"]
    ev = t.get("at_event")
    if ev is not None:
        out.append("  at the event:")
        if ev.get("error"):
            out.append(f"    (not available: {safe(ev['error'])})")
        _frames(out, ev.get("frames", []), bool(ev.get("truncated")), " (the recorded stack ends there)")
        out.append("  at the snapshot:")
    if t.get("error"):
        out.append(f"    (stack not available: {safe(t['error'])})")
    _frames(out, t.get("frames", []), bool(t.get("truncated")) and bool(t.get("frames")), "")
    if t.get("python"):
        out.append("Python stack, innermost first" + (" (holds the GIL):" if t.get("gil") else ":"))
        for p in t["python"]:
            out.append(f"    {safe(p['function'])} ({safe(p['file'])}:{p['line']})")
    return out


def render_module(m: Mapping[str, Any]) -> str:
    path = safe(m["path"])
    bid = f"build-id {safe(m['build_id'])}" if m.get("build_id") else "no build-id"
    pkg = m.get("package")
    if pkg:
        arch = f" ({safe(pkg['architecture'])})" if pkg.get("architecture") else ""
        kind = safe(pkg.get("type", "package"))
        name = safe(pkg.get("name", "?"))
        ver = f" {safe(pkg['version'])}" if pkg.get("version") else ""
        return f"Module {path} from {kind} {name}{ver}{arch}, {bid}"
    return f"Module {path} with {bid}"


def render_text(report: Mapping[str, Any]) -> str:
    """The whole report: every thread (firing first), then the modules."""
    if report.get("error"):
        return f"Stack trace not available: {safe(report['error'])}"
    out: list[str] = []
    threads = report.get("threads", [])
    for t in threads:
        out += render_thread(t)
        out.append("")
    shown = sum(1 for t in threads if not (t.get("error") and not t.get("frames") and t.get("at_event")))
    total = report.get("threads_total", 0)
    if total > shown:
        out.append(f"... {total - shown} more thread(s) not shown ({shown} of {total})")
        out.append("")
    for m in report.get("modules", []):
        out.append(render_module(m))
    for w in report.get("warnings", []):
        out.append(f"note: {safe(w)}")
    return "\n".join(out).rstrip("\n")


def _is_wrapper(f: Mapping[str, Any]) -> bool:
    fn = f.get("function") or ""
    if fn in WAIT_WRAPPERS:
        return True
    if not _LIBC.search(f.get("module") or ""):
        return False
    # libc's internal names (__libc_read, _IO_new_file_underflow, _IO_getline_info) are the
    # machinery under a call, never what the program was doing; and glibc builds its system
    # call wrappers (rename, fdatasync, open64, ...) from sysdeps/unix (sysv/linux/*.c,
    # syscall-template.S), which its debug info names as the frame's file
    return fn.startswith("_") or str(f.get("file") or "").startswith(_SYSCALL_SOURCES)


def where(report: Mapping[str, Any]) -> str:
    """Where the firing (or else the main) thread was: its innermost Python frame if it has
    one, else its first named native frame that is not a libc wait or syscall wrapper (redis:
    ``aeMain``, not ``epoll_wait`` nor the unnamed static ``aeProcessEvents`` between)."""
    threads = report.get("threads") or []
    if report.get("error") or not threads:
        return "-"
    pid = report.get("pid")
    t = next((t for t in threads if t.get("firing")), None)
    t = t or next((t for t in threads if t.get("tid") == pid), threads[0])
    if t.get("python"):
        p = t["python"][0]
        return safe(f"{p['function']} ({os.path.basename(p['file'])}:{p['line']})")
    frames = [f for f in t.get("frames") or [] if not _is_wrapper(f)]
    named = next((f for f in frames if f.get("function")), None)
    if named is not None:  # a distribution binary's static functions have no symbol: skip them
        return safe(named["function"])
    for f in frames:
        if f.get("offset") is not None:
            return safe(f"{_module_name(f.get('module'))} + {f['offset']:#x}")
    first = (t.get("frames") or [None])[0]
    if first is not None:
        return safe(first.get("function") or f"0x{first['pc']:x}")
    return "-"
