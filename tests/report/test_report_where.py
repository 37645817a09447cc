"""WHERE (list-cores' column) skips libc's wrappers and internals to the program's own frame."""

from __future__ import annotations

from typing import Any

from snapd.report import where

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
EXE = "/usr/bin/lines"


def report(*frames: tuple[str | None, str] | tuple[str | None, str, str]) -> dict[str, Any]:
    fs = [
        {
            "pc": 0x1000 + i,
            "function": f[0],
            "module": f[1],
            "offset": i,
            "file": f[2] if len(f) > 2 else None,
        }
        for i, f in enumerate(frames)
    ]
    return {"pid": 1, "error": None, "threads": [{"tid": 1, "firing": False, "frames": fs, "python": []}]}


def test_a_line_reader_is_where_it_reads_lines() -> None:
    rep = report(
        ("__libc_read", LIBC),
        ("_IO_new_file_underflow", LIBC),
        ("__GI__IO_default_uflow", LIBC),
        ("_IO_getline_info", LIBC),
        ("fgets", LIBC),
        ("main", EXE),
    )
    assert where(rep) == "main"


def test_a_libc_function_the_program_called_is_kept() -> None:
    assert where(report(("malloc", LIBC), ("build", EXE))) == "malloc"
    # an underscore name of the program itself is the program's
    assert where(report(("epoll_wait", LIBC), ("_serve", EXE))) == "_serve"


def test_a_system_call_wrapper_is_skipped_by_its_glibc_source() -> None:
    """redis-server's SAVE caught at rename(2): libc6-dbg names the wrapper's file; WHERE is
    the program's rdbSave, as for epoll_wait under aeMain."""
    rep = report(
        ("rename", LIBC, "../sysdeps/unix/sysv/linux/rename.c"),
        ("rdbSave", "/usr/bin/redis-check-rdb"),
        ("saveCommand", "/usr/bin/redis-check-rdb"),
    )
    assert where(rep) == "rdbSave"
    assert where(
        report(("fdatasync", LIBC, "../sysdeps/unix/sysv/linux/fdatasync.c"), ("XLogFlush", EXE))
    ) == ("XLogFlush")
    assert (
        where(report(("unlink", LIBC, "../sysdeps/unix/syscall-template.S"), ("cleanup", EXE))) == "cleanup"
    )
    # libc code that is not a system call wrapper is what the program was doing
    assert where(report(("malloc", LIBC, "./malloc/malloc.c"), ("build", EXE))) == "malloc"
    # the program's own file of that name is the program's
    assert where(report(("rename", EXE, "../sysdeps/unix/rename.c"), ("main", EXE))) == "rename"
