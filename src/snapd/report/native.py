"""Native stacks and modules of a core, with drgn (libdwfl-based; honours DEBUGINFOD_URLS).

drgn unwinds with DWARF CFI (.eh_frame/.debug_frame) and falls back to frame pointers; a frame
it cannot name keeps its pc and "module + offset", like coredumpctl's. Debug info comes from the
modules' files (matched by build-id), /usr/lib/debug, the paths given (``--exe``) and debuginfod.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

import drgn

from snapd.report import package
from snapd.report.model import Frame, Module, clip

MAX_SEARCH_FILES = 256
#: what drgn raises on bad input (besides MemoryError, which the worker reports)
DRGN_ERRORS = (drgn.FaultError, drgn.ObjectAbsentError, LookupError, ValueError, OverflowError, OSError)


@dataclass
class Native:
    prog: drgn.Program
    warnings: list[str] = field(default_factory=list)


def search_files(paths: Iterable[str]) -> list[str]:
    """``--exe`` values: files as given, directories by their regular files (not recursive)."""
    out: list[str] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(p)
        elif stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(p))
            except OSError:
                continue
            for name in names[:MAX_SEARCH_FILES]:
                full = os.path.join(p, name)
                if os.path.isfile(full):
                    out.append(full)
    return out


def open_core(core_fd: int, search: Iterable[str] = (), like: drgn.Program | None = None) -> Native:
    """A drgn program on the core (drgn gets its own dup of ``core_fd``), debug info loaded;
    with ``like``, its modules are those of that program (see :func:`like_modules`)."""
    logging.getLogger("drgn").setLevel(logging.ERROR)  # its "missing debugging symbols" lines
    prog = drgn.Program()
    prog.set_core_dump(os.dup(core_fd))
    if like is not None:
        like_modules(prog, like)
    paths = list(search)
    dirs = [p for p in paths if os.path.isdir(p)]
    if dirs:
        opts = prog.debug_info_options
        opts.directories = (*dirs, *opts.directories)
    native = Native(prog)
    try:
        prog.load_debug_info(search_files(paths), default=True)
    except drgn.MissingDebugInfoError as err:
        missing = [line.strip() for line in str(err).splitlines() if line.startswith("missing")]
        native.warnings.append(
            clip("no debug info for some modules" + (f": {missing[0]}" if missing else ""))
        )
    return native


def _module_at(prog: drgn.Program, pc: int) -> drgn.Module | None:
    try:
        return prog.module(pc)
    except LookupError:
        return None


def frames(prog: drgn.Program, thread: drgn.Thread, limit: int) -> tuple[list[Frame], bool]:
    """Up to ``limit`` frames, innermost first; True if there were more."""
    trace = thread.stack_trace()
    return frames_of(prog, trace, limit)


def frames_of(prog: drgn.Program, trace: drgn.StackTrace, limit: int) -> tuple[list[Frame], bool]:
    out: list[Frame] = []
    for i, f in enumerate(trace):
        try:
            pc = f.pc
        except LookupError:
            continue  # the outermost "frame" of a trace whose end is unknown
        if len(out) >= limit:
            return out, True
        # A return address points after the call: look up the call itself (as drgn and gdb do).
        lookup = pc if i == 0 or f.interrupted else pc - 1
        name = _function(f)
        file = line = None
        try:
            src = f.source()
            file, line = clip(src[0]), int(src[1])
        except DRGN_ERRORS:
            pass
        m = _module_at(prog, lookup)
        base = m.address_range[0] if m is not None and m.address_range else None
        out.append(
            Frame(
                pc=pc,
                function=clip(name) if name else None,
                module=clip(m.name) if m is not None else None,
                offset=pc - base if base is not None else None,
                file=file,
                line=line,
                inline=bool(f.is_inline),
            )
        )
    return out, False


def _function(f: drgn.StackFrame) -> str | None:
    """The DWARF function (inlined ones too), else the ELF symbol; None when unknown (drgn's
    ``StackFrame.name`` would be the pc in hex)."""
    with contextlib.suppress(*DRGN_ERRORS):
        name = f.function_name
        if name:
            return str(name)
    with contextlib.suppress(*DRGN_ERRORS):
        return str(f.symbol().name)
    return None


def like_modules(prog: drgn.Program, like: drgn.Program) -> None:
    """Give ``prog`` the shared libraries of ``like`` (the same process at another moment), at
    the same addresses and from the same files.

    A core without the memory of the dynamic linker's r_debug list (a derived core holds only
    ELF headers and a stack) shows drgn no shared library; these are the snapshot's. drgn finds
    the executable and the vdso by itself (from the auxiliary vector and their headers)."""
    for m in like.modules():
        if not isinstance(m, drgn.SharedLibraryModule):
            continue
        try:
            n = prog.shared_library_module(m.name, m.dynamic_address, create=True)
            n.address_ranges = m.address_ranges
            if m.build_id:
                n.build_id = m.build_id
            for path in dict.fromkeys(p for p in (m.loaded_file_path, m.debug_file_path) if p):
                n.try_file(path)
        except DRGN_ERRORS:
            continue


def modules(prog: drgn.Program, limit: int) -> tuple[list[Module], bool]:
    """Every module (executable, shared objects, vdso) with its build-id and package note."""
    out: list[Module] = []
    for m in prog.modules():
        if len(out) >= limit:
            return out, True
        rng = m.address_range
        if rng is None:
            continue
        start, end = rng
        pkg = package.from_memory(lambda a, n: _read(prog, a, n), start)
        if pkg is None and m.loaded_file_path:
            pkg = package.from_file(m.loaded_file_path)
        out.append(
            Module(
                path=clip(m.name),
                build_id=m.build_id.hex() if m.build_id else None,
                package=pkg,
                start=start,
                end=end,
            )
        )
    out.sort(key=lambda mod: mod.start)
    return out, False


def _read(prog: drgn.Program, addr: int, size: int) -> bytes:
    """Core memory, as much of [addr, addr+size) as is there from addr on."""
    try:
        return bytes(prog.read(addr, size))
    except drgn.FaultError:
        pass
    # A read crossing into an absent page fails whole: take what is there, page by page.
    out = bytearray()
    page_end = (addr | 0xFFF) + 1
    while len(out) < size:
        n = min(size - len(out), page_end - addr)
        try:
            out += prog.read(addr, n)
        except drgn.FaultError:
            break
        addr += n
        page_end = addr + 0x1000
    return bytes(out)


def main_file(prog: drgn.Program) -> str | None:
    try:
        path = prog.main_module().loaded_file_path
    except LookupError:
        return None
    return str(path) if path else None


def is_cpython(prog: drgn.Program) -> bool:
    """The interpreter's runtime state is there (python3.X, or a program embedding libpython)."""
    try:
        prog.symbol("_PyRuntime")
        return True
    except LookupError:
        return False
