"""The trigger prototype tests' harness: BPF prototypes built with bcc, their ring buffers, the
commands of tests/victims/trg_victim.c.

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
from typing import Any

from snapd.probe import trigger_layout
from support.paths import SRC, TESTS
from support.victims import Victim
from support.waiting import scaled, wait_for

BPF_DIR = TESTS / "triggers" / "bpf"


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
    deadline = time.monotonic() + scaled(timeout)
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


# ---- the uprobe prototype (tests/triggers/bpf/uprobe_proto.bpf.c) ------------------------------

FIELD_NONE = 255


def proto_flags() -> list[str]:
    from snapd.probe import layout

    return [*layout.cflags(), f"-DFIELD_NONE={FIELD_NONE}"]


class AtEvent(ct.Structure):
    _fields_ = [
        ("regs", ct.c_uint64 * trigger_layout.USER_REGS),
        ("stack_len", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("stack", ct.c_uint8 * (trigger_layout.EVENT_STACK + 4096)),
    ]


class Fire(ct.Structure):
    _fields_ = [
        ("ts", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("site", ct.c_uint32),
        ("kind", ct.c_uint32),
        ("args", ct.c_int64 * 6),
        ("ret", ct.c_int64),
        ("latency", ct.c_uint64),
        ("ip", ct.c_uint64),
        ("at", AtEvent),
    ]

    def regs_bytes(self) -> bytes:
        return bytes(self.at.regs)

    def stack_bytes(self) -> bytes:
        return bytes(self.at.stack[: self.at.stack_len])


class UProto:
    """The uprobe prototype loaded once: sites (cookies) are configured, links attached."""

    def __init__(self, multi: bool = False) -> None:
        """``multi``: programs loaded for uprobe_multi links, and attached with them."""
        from bcc import BPF

        from snapd.sys import bpflink

        self.multi = multi
        how = bpflink.BPF_TRACE_UPROBE_MULTI if multi else -1
        self.bpf = build("uprobe_proto", proto_flags())
        self.entry_fd = self.bpf.load_func(b"proto_uprobe", BPF.KPROBE, None, how).fd
        self.return_fd = self.bpf.load_func(b"proto_uretprobe", BPF.KPROBE, None, how).fd
        self.ring = Ring(self.bpf, "fires", Fire)
        self.links: list[Any] = []
        self.next = 1

    def site(
        self,
        flags: int = 0,
        args: tuple[Any, ...] = (),
        tgid: int = 0,
        field: int = FIELD_NONE,
        op: int = 0,
        k: int = 0,
        at_event: bool = False,
    ) -> int:
        from snapd.probe import uprobes

        idx = self.next
        self.next += 1
        set_struct(self.bpf, "usites", idx, uprobes.usite_bytes(1, 0, flags, args))
        pred = ct.c_uint32 * 4
        raw = bytes(pred(tgid, field, op, int(at_event))) + int(k).to_bytes(8, "little", signed=True)
        set_struct(self.bpf, "preds", idx, raw)
        return idx

    def attach(self, idx: int, path: str, offset: int, ret: bool = False, **kw: Any) -> Any:
        from snapd.probe import uprobes
        from snapd.sys import bpflink

        fd = self.return_fd if ret else self.entry_fd
        if self.multi:
            site = bpflink.Site(offset, idx, kw.pop("ref_ctr_offset", 0))
            link = uprobes.attach_multi(fd, path, [site], retprobe=ret, **kw)
        else:
            link = uprobes.attach(fd, path, offset, retprobe=ret, cookie=idx, **kw)
        self.links.append(link)
        return link

    def count(self, i: int) -> int:
        return int(sum(self.bpf[b"counts"][ct.c_int(i)]))

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.links = []
        self.bpf.cleanup()
