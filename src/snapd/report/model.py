"""The report of a core: one record per thread, per frame, per module, and its bounds.

The JSON shape (``Report.to_dict``) is what ``snapd ctl info --json`` holds under ``report``::

    {"threads": [{"tid", "name", "state", "firing", "gil",
                  "frames": [{"pc", "function", "module", "offset", "file", "line", "inline"}],
                  "python": [{"function", "file", "line"}],
                  "at_event": null | {"frames": [...], "truncated", "error"},
                  "truncated", "error"}],
     "modules": [{"path", "build_id", "package", "start", "end"}],
     "truncated": bool, "error": null | "why", ...}

:func:`Report.from_dict` is the only way a report comes back from the sandboxed worker: it checks
every field's type and bounds, so what the parent stores is plain data of a known shape whatever
the worker (which read hostile memory) sent.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from typing import Any

#: the most of the firing thread's stack an event records (from its stack pointer up)
MAX_EVENT_STACK = 16 << 10
USER_REGS_SIZE = 27 * 8  # struct user_regs_struct, arch/x86/include/asm/user_64.h
MAX_DERIVED = 32 << 20  # the "at the event" core derived from a snapshot (a memfd)
REG_PC = 16
REG_SP = 19
MAX_TEXT = 512  # a function or file name longer than this is cut (C++ templates, hostile data)
MAX_U64 = (1 << 64) - 1


class MalformedReport(ValueError):
    pass


@dataclass(frozen=True)
class ReportLimits:
    """How much a report may hold and use. The defaults are coredumpctl's 64 x 64."""

    max_threads: int = 64
    max_frames: int = 64
    max_python_frames: int = 64
    max_modules: int = 512
    #: wall-clock seconds for the whole report, then the worker is killed
    deadline: float = 30.0
    #: address space of the worker (drgn indexes debug info in memory)
    memory: int = 4 << 30
    #: also read Python stacks when the target is CPython
    python: bool = True
    #: the worker's nice value and idle I/O class: the daemon's reports yield to everything
    #: (the next dump is never delayed); an operator's ``snapd inspect`` need not
    nice: int = 19
    idle_io: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventError(ValueError):
    pass


@dataclass(frozen=True)
class EventStack:
    """What the probe recorded of the firing thread at the event."""

    tid: int
    regs: bytes  # struct user_regs_struct (27 x u64, arch/x86/include/asm/user_64.h)
    stack: bytes  # user memory from regs.sp upward, at most MAX_EVENT_STACK bytes

    def __post_init__(self) -> None:
        if len(self.regs) != USER_REGS_SIZE:
            raise EventError(f"registers: {len(self.regs)} bytes, not {USER_REGS_SIZE}")
        if len(self.stack) > MAX_EVENT_STACK:
            raise EventError(f"stack copy: {len(self.stack)} bytes, more than {MAX_EVENT_STACK}")

    @property
    def sp(self) -> int:
        return int(struct.unpack_from("<Q", self.regs, REG_SP * 8)[0])

    @property
    def pc(self) -> int:
        return int(struct.unpack_from("<Q", self.regs, REG_PC * 8)[0])

    def to_dict(self) -> dict[str, object]:
        return {"tid": self.tid, "regs": self.regs.hex(), "stack": self.stack.hex()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> EventStack:
        return cls(int(str(d["tid"])), bytes.fromhex(str(d["regs"])), bytes.fromhex(str(d["stack"])))


@dataclass(frozen=True)
class Frame:
    pc: int
    function: str | None
    module: str | None  # the module's path, as in ``modules``
    offset: int | None  # pc - the module's lowest address (coredumpctl's "module + 0xOFF")
    file: str | None = None
    line: int | None = None
    inline: bool = False  # an inlined call: same pc as the frame below it


@dataclass(frozen=True)
class PyFrame:
    function: str
    file: str
    line: int


@dataclass
class AtEvent:
    """The firing thread's stack at the event, from the registers and stack bytes it recorded."""

    frames: list[Frame] = field(default_factory=list)
    truncated: bool = False
    error: str | None = None


@dataclass
class ThreadStack:
    tid: int
    name: str | None = None
    state: str | None = None
    firing: bool = False
    gil: bool = False
    frames: list[Frame] = field(default_factory=list)
    python: list[PyFrame] = field(default_factory=list)
    at_event: AtEvent | None = None
    truncated: bool = False  # more frames than max_frames
    error: str | None = None  # why its stack could not be read


@dataclass(frozen=True)
class Module:
    path: str
    build_id: str | None
    package: dict[str, str] | None = None  # the FDO package note, when present
    start: int = 0
    end: int = 0


@dataclass
class Report:
    threads: list[ThreadStack] = field(default_factory=list)
    modules: list[Module] = field(default_factory=list)
    truncated: bool = False
    error: str | None = None
    pid: int = 0
    comm: str | None = None
    threads_total: int = 0  # threads in the core (``threads`` holds at most max_threads)
    python_version: str | None = None
    gil: int | None = None  # tid of the thread holding the GIL
    warnings: list[str] = field(default_factory=list)  # parts that failed (e.g. Python stacks)
    sandbox: str = ""  # what confinement the worker ran under
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def failed(cls, why: str, elapsed: float = 0.0) -> Report:
        return cls(error=why, elapsed=elapsed)

    @classmethod
    def from_dict(cls, d: Any) -> Report:
        """A report from untrusted JSON; raises :class:`MalformedReport`."""
        o = _obj(d, "report")
        return cls(
            threads=[_thread(t) for t in _list(o, "threads", 1 << 16)],
            modules=[_module(m) for m in _list(o, "modules", 1 << 16)],
            truncated=_bool(o, "truncated"),
            error=_opt_text(o, "error"),
            pid=_int(o, "pid"),
            comm=_opt_text(o, "comm"),
            threads_total=_int(o, "threads_total"),
            python_version=_opt_text(o, "python_version"),
            gil=_opt_int(o, "gil"),
            warnings=[_text_value(w, "warning") for w in _list(o, "warnings", 64)],
            sandbox=_opt_text(o, "sandbox") or "",
            elapsed=float(o.get("elapsed", 0.0)) if isinstance(o.get("elapsed", 0.0), int | float) else 0.0,
        )


def clip(s: object) -> str:
    text = str(s)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _obj(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise MalformedReport(f"{what}: not an object")
    return d


def _list(o: dict[str, Any], key: str, cap: int) -> list[Any]:
    v = o.get(key, [])
    if not isinstance(v, list) or len(v) > cap:
        raise MalformedReport(f"{key}: not a list of at most {cap}")
    return v


def _int(o: dict[str, Any], key: str) -> int:
    v = o.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or not -(1 << 63) <= v <= MAX_U64:
        raise MalformedReport(f"{key}: not an integer")
    return v


def _opt_int(o: dict[str, Any], key: str) -> int | None:
    return None if o.get(key) is None else _int(o, key)


def _bool(o: dict[str, Any], key: str) -> bool:
    v = o.get(key, False)
    if not isinstance(v, bool):
        raise MalformedReport(f"{key}: not a boolean")
    return v


def _text_value(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise MalformedReport(f"{key}: not a string")
    return clip(v)


def _opt_text(o: dict[str, Any], key: str) -> str | None:
    v = o.get(key)
    return None if v is None else _text_value(v, key)


def _frame(d: Any) -> Frame:
    o = _obj(d, "frame")
    return Frame(
        pc=_int(o, "pc"),
        function=_opt_text(o, "function"),
        module=_opt_text(o, "module"),
        offset=_opt_int(o, "offset"),
        file=_opt_text(o, "file"),
        line=_opt_int(o, "line"),
        inline=_bool(o, "inline"),
    )


def _pyframe(d: Any) -> PyFrame:
    o = _obj(d, "python frame")
    return PyFrame(
        function=_text_value(o.get("function"), "function"),
        file=_text_value(o.get("file"), "file"),
        line=_int(o, "line"),
    )


def _at_event(d: Any) -> AtEvent | None:
    if d is None:
        return None
    o = _obj(d, "at_event")
    return AtEvent(
        frames=[_frame(f) for f in _list(o, "frames", 4096)],
        truncated=_bool(o, "truncated"),
        error=_opt_text(o, "error"),
    )


def _thread(d: Any) -> ThreadStack:
    o = _obj(d, "thread")
    return ThreadStack(
        tid=_int(o, "tid"),
        name=_opt_text(o, "name"),
        state=_opt_text(o, "state"),
        firing=_bool(o, "firing"),
        gil=_bool(o, "gil"),
        frames=[_frame(f) for f in _list(o, "frames", 4096)],
        python=[_pyframe(f) for f in _list(o, "python", 4096)],
        at_event=_at_event(o.get("at_event")),
        truncated=_bool(o, "truncated"),
        error=_opt_text(o, "error"),
    )


def _module(d: Any) -> Module:
    o = _obj(d, "module")
    pkg = o.get("package")
    package = None
    if pkg is not None:
        p = _obj(pkg, "package")
        if len(p) > 32:
            raise MalformedReport("package: too many keys")
        package = {clip(k): _text_value(v, "package value") for k, v in p.items()}
    return Module(
        path=_text_value(o.get("path"), "path"),
        build_id=_opt_text(o, "build_id"),
        package=package,
        start=_int(o, "start"),
        end=_int(o, "end"),
    )
