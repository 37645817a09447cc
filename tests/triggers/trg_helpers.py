"""Helpers of the trigger prototype tests (a module with a unique name; see tests/snapd_testlib.py).

The prototypes are small standalone BPF programs in tests/triggers/bpf/ that #include the
reusable pieces in src/snapd/probe/*.bpf.c, built with bcc exactly as snapd builds its own
program (fixed source, -D constants from snapd.probe.trigger_layout).
"""

from __future__ import annotations

import ctypes as ct
import os
import re
import select
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from snapd.probe import trigger_layout
from snapd_testlib import Victim, wait_for

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"
BPF_DIR = HERE / "bpf"


def build(name: str, extra: Sequence[str] = ()) -> Any:
    """Compile tests/triggers/bpf/NAME.bpf.c with bcc (the caller calls .cleanup())."""
    from bcc import BPF

    flags = [f"-I{SRC}", *trigger_layout.cflags(), *extra]
    return BPF(src_file=str(BPF_DIR / f"{name}.bpf.c").encode(), cflags=flags)


class Ring:
    """Collects the records of one BPF ring buffer as ``struct_type`` copies."""

    def __init__(self, bpf: Any, name: str, struct_type: type[ct.Structure]) -> None:
        self.bpf = bpf
        self.type = struct_type
        self.records: list[Any] = []
        bpf[name.encode()].open_ring_buffer(self._cb)

    def _cb(self, _ctx: Any, data: Any, size: int) -> int:
        rec = self.type()
        ct.memmove(ct.addressof(rec), data, min(size, ct.sizeof(self.type)))
        self.records.append(rec)
        return 0

    def wait(self, n: int = 1, timeout: float = 10.0, what: str = "ring buffer records") -> list[Any]:
        def got() -> bool:
            self.bpf.ring_buffer_poll(20)
            return len(self.records) >= n

        wait_for(got, timeout, what)
        return self.records

    def drain(self, seconds: float = 0.2) -> list[Any]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.bpf.ring_buffer_poll(20)
        return self.records

    def take(self) -> list[Any]:
        out, self.records = self.records, []
        return out


def command(v: Victim, line: str, timeout: float = 30.0) -> tuple[int, int, int]:
    """Send one command to trg_victim; return (tid, ret, errno) from its "done" line."""
    assert v.proc.stdin is not None and v.proc.stdout is not None
    v.proc.stdin.write(line.encode() + b"\n")
    v.proc.stdin.flush()
    fd = v.proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"victim {v.pid} did not answer {line[:60]!r}")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"victim {v.pid} exited during {line[:60]!r}")
        buf += chunk
    parts = buf.split()
    assert parts[0] == b"done", buf
    return int(parts[1]), int(parts[2]), int(parts[3])


def marker_addr(v: Victim) -> int:
    m = re.search(r"marker=(0x[0-9a-f]+)", v.ready_line)
    assert m, v.ready_line
    return int(m.group(1), 16)


def set_struct(bpf: Any, table: str, key: int, raw: bytes) -> None:
    """Write ``raw`` as the value of ``key`` (an array index or u32 hash key) of ``table``."""
    t = bpf[table.encode()]
    leaf = t.Leaf()
    assert len(raw) <= ct.sizeof(leaf), (table, len(raw), ct.sizeof(leaf))
    ct.memmove(ct.addressof(leaf), raw, len(raw))
    t[t.Key(key)] = leaf


def hexs(b: bytes) -> str:
    return b.hex() or "-"


def until(cond: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    return wait_for(cond, timeout, what)
