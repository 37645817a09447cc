"""The files a core says were mapped (its NT_FILE note), listed by a confined child.

The report's worker may read, by path, only the system trees, snapd's code, the core and the
modules of the target. Where no /proc context names those modules, the worker, before it locks
itself down, forks a child that confines itself at once (nobody, no capability, nothing to open
by path) and lists them out of the core (hostile input); the worker keeps only regular ELF files
(:func:`snapd.report.files.elf_files`), so a forged NT_FILE naming /etc/shadow gains nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time

from snapd.report.corefile import read_notes
from snapd.report.files import MAX_FILES
from snapd.sandbox import confine
from snapd.sandbox.limits import Limits

TIMEOUT = 10.0
MAX_BYTES = 8 << 20


def listed_files(core_fd: int) -> list[str]:
    """The absolute paths of the core's NT_FILE note, deduplicated, at most MAX_FILES."""
    with os.fdopen(os.dup(core_fd), "rb") as f:
        notes = read_notes(f)
    seen: dict[str, None] = {}
    for _start, _end, _pgoff, path in notes.files():
        if path.startswith("/") and len(seen) < MAX_FILES:
            seen[path] = None
    return list(seen)


def confined_listing(core_fd: int, limits: Limits, timeout: float = TIMEOUT) -> tuple[list[str], str | None]:
    """:func:`listed_files` in a forked child confined as tightly as the sandbox allows (no
    capability, Landlock: nothing to open by path): called by the worker before it locks itself
    down, while it may still grant itself the files. ([], why) if the child fails or overstays."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: confine, parse, answer, exit without running any cleanup
        code = 1
        try:
            os.close(r)
            confine.lock_down(limits.but(keep_read_cap=False, read_paths=(), write_paths=()))
            try:
                data = json.dumps(listed_files(core_fd)).encode()
            except Exception as err:  # hostile input: whatever it raises is the answer
                data = json.dumps(" ".join(f"{type(err).__name__}: {err}".split())[:200]).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view) :]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    out = bytearray()
    deadline = time.monotonic() + timeout
    why = None
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                why = f"timed out after {timeout:g} s"
                break
            chunk = os.read(r, 1 << 16)
            if not chunk or len(out) > MAX_BYTES:
                break
            out += chunk
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    try:
        paths = json.loads(bytes(out))
    except ValueError:
        return [], why or "no answer"
    if isinstance(paths, str):
        return [], paths
    return ([p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []), why
