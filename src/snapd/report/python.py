"""Python stacks of a CPython core (3.9-3.13), with pystack (Bloomberg).

pystack finds the interpreter's state (``_PyRuntime`` and the thread states) in the core and
walks each thread's frame chain; it also says which thread holds the GIL. It opens the core by
path, so the worker gives it ``/proc/self/fd/N`` (see :mod:`snapd.report.build`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snapd.report.model import PyFrame, clip


@dataclass
class PyThreadStack:
    frames: list[PyFrame] = field(default_factory=list)  # innermost first
    gil: bool = False
    truncated: bool = False


@dataclass
class PyStacks:
    threads: dict[int, PyThreadStack] = field(default_factory=dict)
    version: str | None = None


def stacks(core_path: str, executable: str, lib_search: str | None, limit: int) -> PyStacks:
    """Each thread's Python frames (at most ``limit``, innermost first) and the GIL holder."""
    from pystack.engine import NativeReportingMode, get_process_threads_for_core

    out = PyStacks()
    threads = get_process_threads_for_core(
        core_path,
        executable,
        library_search_path=lib_search,
        native_mode=NativeReportingMode.OFF,
        locals=False,
    )
    for t in threads:
        if out.version is None and t.python_version:
            out.version = ".".join(map(str, t.python_version))
        frames = [
            PyFrame(clip(f.code.scope), clip(f.code.filename), int(f.code.location.lineno)) for f in t.frames
        ]
        frames.reverse()  # pystack yields the oldest call first
        out.threads[int(t.tid)] = PyThreadStack(
            frames=frames[:limit], gil=bool(t.holds_the_gil > 0), truncated=len(frames) > limit
        )
    return out
