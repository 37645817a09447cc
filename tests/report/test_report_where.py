"""WHERE (list-cores' column) skips libc's wrappers and internals to the program's own frame."""

from __future__ import annotations

from typing import Any

from snapd.report import where

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
EXE = "/usr/bin/lines"


def report(*frames: tuple[str | None, str]) -> dict[str, Any]:
    fs = [{"pc": 0x1000 + i, "function": fn, "module": m, "offset": i} for i, (fn, m) in enumerate(frames)]
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
