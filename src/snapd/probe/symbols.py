"""Where a `function` trigger attaches: the binary a target maps and the file offset of a symbol.

A rule names ``binary`` as an absolute path or as a library name (``libc.so.6``) and ``symbol``
as an ELF symbol. For a target process the binary is the file it actually maps (its
/proc/PID/maps line), opened through ``/proc/PID/map_files/START-END`` so that a container's
file (another mount namespace) or a library replaced on disk since the target mapped it (maps
says "(deleted)") is still the inode the uprobe is registered on; without a process (``snapd
check``, system-wide probes) it is the host's file. Symbols are read with pyelftools from
``.dynsym`` (through ``.gnu.hash``/``.hash`` when present: a lookup, not a scan) and ``.symtab``,
and turned into the file offset uprobes want (Documentation/trace/uprobetracer.rst: the offset
of the instruction in the file, whatever the load address: PIE executables, shared objects and
non-PIE executables alike).

Parsed files are cached per (device, inode, mtime, size): resolving the same symbol for a
hundred postgres backends reads the ELF once. Every failure is a :class:`ResolveError` naming
the rule key it belongs to, so that the loader can report it at that key's ``file:line:col``.
"""

from __future__ import annotations

import difflib
import os
import stat as stat_mod
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.hash import ELFHashSection, GNUHashSection
from elftools.elf.sections import SymbolTableSection

from snapd import procfs
from snapd.errors import SnapdError
from snapd.rules.probespec import SYMBOL_MAX as SYMBOL_MAX
from snapd.rules.probespec import symbol_problem

#: Bounds on what one ELF file may make us hold (a target's binary is not trusted either).
MAX_SYMBOLS = 1 << 21  # symbols read from one table (libjvm's .symtab has 58k)
MAX_SEGMENTS = 256
MAX_CACHED = 64  # parsed files kept
LIB_DIRS_FALLBACK = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)
LD_SO_CONF = "/etc/ld.so.conf"
MAX_CONF_FILES = 64
SHN_UNDEF = "SHN_UNDEF"
# pyelftools names STT_GNU_IFUNC (10) after the range it opens, STT_LOOS
IFUNC_TYPES = frozenset({"STT_GNU_IFUNC", "STT_LOOS"})
FUNC_TYPES = frozenset({"STT_FUNC"}) | IFUNC_TYPES
_TYPE_WORDS = {
    "STT_OBJECT": "variable",
    "STT_TLS": "thread-local variable",
    "STT_SECTION": "section",
    "STT_FILE": "file name",
    "STT_COMMON": "common block",
}


#: name -> link-time address of a symbol of one file (None: not defined there)
SymbolResolver = Callable[[str], "int | None"]


class ResolveError(SnapdError):
    """A rule's ``binary``, ``symbol`` or ``probe`` cannot be resolved.

    ``key`` is the rule key at fault (``binary``, ``symbol``, ``probe``) so that the loader can
    point at it; ``msg`` is the message without a location; ``pid`` the target it was resolved
    for (None: the host's file)."""

    def __init__(self, key: str, msg: str, pid: int | None = None) -> None:
        where = f"pid {pid}: " if pid is not None else ""
        super().__init__(f"{where}{key}: {msg}")
        self.key = key
        self.msg = msg
        self.pid = pid


@dataclass(frozen=True)
class FileKey:
    """What makes two opens the same parsed file (an upgrade changes inode or mtime)."""

    dev: int
    ino: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileKey:
        return cls(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class Binary:
    """An ELF file as a target (or the host) maps it.

    ``path`` is what the kernel opens to register a uprobe (perf_event_open's uprobe_path): a
    /proc/PID/map_files link for a target, the host path otherwise. ``shown`` is the file's
    name as the target sees it, for messages. ``start`` is where the target mapped its first
    page (file offset 0), or None without a target."""

    path: str
    shown: str
    key: FileKey
    pid: int | None = None
    start: int | None = None


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    executable: bool


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int  # link-time virtual address (st_value)
    size: int
    type: str  # STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, ...
    table: str  # .dynsym or .symtab


@dataclass(frozen=True)
class Site:
    """One place to put a uprobe: ``offset`` in ``binary`` (the instruction's file offset)."""

    binary: Binary
    offset: int
    vaddr: int  # link-time address of the instruction
    symbol: str
    retprobe: bool = False


@dataclass
class ElfInfo:
    """What snapd reads of one ELF file: its loadable segments and (lazily) its symbols."""

    key: FileKey
    machine: str
    etype: str
    segments: tuple[Segment, ...]
    _scanned: dict[str, list[Symbol]] | None = field(default=None, repr=False)

    def to_offset(self, vaddr: int) -> int | None:
        """The file offset of link-time address ``vaddr`` (None: in no file-backed segment)."""
        for s in self.segments:
            if s.vaddr <= vaddr < s.vaddr + s.filesz:
                return vaddr - s.vaddr + s.offset
        return None

    def executable_at(self, vaddr: int) -> bool:
        return any(s.executable and s.vaddr <= vaddr < s.vaddr + s.filesz for s in self.segments)


_cache: OrderedDict[FileKey, ElfInfo] = OrderedDict()
_cache_lock = threading.Lock()


def _ld_dirs() -> list[str]:
    """The dynamic linker's search directories (ld.so.conf(5) and its includes), then the usual."""
    out: list[str] = []
    todo, seen = [LD_SO_CONF], 0
    while todo and seen < MAX_CONF_FILES:
        path = todo.pop(0)
        seen += 1
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read(1 << 16).splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line.startswith("include "):
                import glob

                pat = line[len("include ") :].strip()
                if not pat.startswith("/"):
                    pat = os.path.join(os.path.dirname(path), pat)
                todo += sorted(glob.glob(pat))[:MAX_CONF_FILES]
            elif line.startswith("/"):
                out.append(line)
    for d in LIB_DIRS_FALLBACK:
        if d not in out:
            out.append(d)
    return out


def is_library_name(spec: str) -> bool:
    """``libc.so.6``-style: a file name without a directory."""
    return "/" not in spec


def _lib_matches(basename: str, spec: str) -> bool:
    # "libc.so.6" names that file; "libc.so" also names libc.so.6 (its soname's prefix), as
    # the linker's -lc would; "libc" alone is too vague (libcap, libcrypt...) unless exact.
    return basename == spec or (".so" in spec and basename.startswith(spec + "."))


def _stat(path: str, key: str, pid: int | None) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise ResolveError(key, f"{path}: no such file", pid) from err
    except PermissionError as err:
        raise ResolveError(key, f"{path}: permission denied (resolving needs root)", pid) from err
    except OSError as err:
        raise ResolveError(key, f"{path}: {err.strerror or err}", pid) from err
    if not stat_mod.S_ISREG(st.st_mode):
        raise ResolveError(key, f"{path}: not a regular file", pid)
    return st


def resolve_binary(spec: str, pid: int | None = None) -> Binary:
    """The file ``spec`` names, as ``pid`` maps it (or on the host when ``pid`` is None).

    For a target, the file must be mapped: a library it has not loaded (yet) is an error, as
    is an executable that is not its own (a uprobe there would never fire in it)."""
    if not spec:
        raise ResolveError("binary", "must not be empty")
    if "\0" in spec:
        raise ResolveError("binary", "must not contain NUL bytes")
    if pid is None:
        return _host_binary(spec)
    try:
        maps = procfs.maps(pid)
    except SnapdError as err:
        raise ResolveError("binary", f"cannot read its mappings: {err}", pid) from err
    want = None if is_library_name(spec) else os.path.normpath(spec)
    chosen = None
    for m in maps:
        if not m.file_backed or not m.path.startswith("/"):
            continue
        path = m.path[: -len(" (deleted)")] if m.deleted else m.path
        hit = _lib_matches(os.path.basename(path), spec) if want is None else path == want
        if hit and (chosen is None or (m.offset == 0 and chosen.offset != 0)):
            chosen = m
            if m.offset == 0:
                break
    if chosen is None:
        what = "library" if want is None else "file"
        raise ResolveError(
            "binary",
            f"it maps no {what} {spec!r} (see /proc/{pid}/maps; a library loaded later with "
            "dlopen is found once it is loaded)",
            pid,
        )
    shown = chosen.path
    # map_files names the mapped file itself, whatever mount namespace or replacement on disk:
    # fs/proc/base.c proc_map_files_get_link (needs CAP_SYS_ADMIN, as uprobes do).
    link = f"/proc/{pid}/map_files/{chosen.start:x}-{chosen.end:x}"
    st = _stat(link, "binary", pid)
    # (overlayfs may show another device in maps than stat does: the inode must agree)
    if st.st_ino != chosen.inode:
        raise ResolveError("binary", f"{shown}: changed while being resolved; retry", pid)
    start = chosen.start - chosen.offset
    return Binary(link, shown, FileKey.of(st), pid, start)


def _host_binary(spec: str) -> Binary:
    if not is_library_name(spec):
        if not spec.startswith("/"):
            raise ResolveError("binary", f"{spec!r}: give an absolute path or a library name like libc.so.6")
        st = _stat(spec, "binary", None)
        return Binary(spec, spec, FileKey.of(st))
    for d in _ld_dirs():
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in sorted(names, key=lambda n: (n != spec, len(n), n)):
            if _lib_matches(n, spec):
                path = os.path.join(d, n)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                # libc.so is a linker script (libc6-dev): only an ELF file can be probed
                if stat_mod.S_ISREG(st.st_mode) and _is_elf(path):
                    return Binary(path, path, FileKey.of(st))
    raise ResolveError(
        "binary", f"no library {spec!r} in the linker's directories (ld.so.conf); give its absolute path"
    )


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def open_checked(binary: Binary) -> BinaryIO:
    """``binary`` opened for reading, refused if it is no longer the file that was resolved."""
    try:
        f = open(binary.path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as err:
        raise ResolveError("binary", f"{binary.shown}: {err.strerror or err}", binary.pid) from err
    st = os.fstat(f.fileno())
    if FileKey.of(st) != binary.key:
        f.close()
        raise ResolveError("binary", f"{binary.shown}: changed while being resolved; retry", binary.pid)
    return f


def elf_info(binary: Binary) -> ElfInfo:
    """The parsed file (cached per :class:`FileKey`)."""
    with _cache_lock:
        info = _cache.get(binary.key)
        if info is not None:
            _cache.move_to_end(binary.key)
            return info
    with open_checked(binary) as f:
        info = _parse(binary, f)
    with _cache_lock:
        _cache[binary.key] = info
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    return info


def _parse(binary: Binary, f: BinaryIO) -> ElfInfo:
    try:
        elf = ELFFile(f)
        if elf.elfclass != 64 or not elf.little_endian:
            raise ResolveError("binary", f"{binary.shown}: not a 64-bit little-endian ELF file", binary.pid)
        if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
            raise ResolveError(
                "binary", f"{binary.shown}: an ELF {elf['e_type']}, not an executable or library", binary.pid
            )
        if elf.num_segments() > MAX_SEGMENTS:
            raise ResolveError("binary", f"{binary.shown}: more than {MAX_SEGMENTS} segments", binary.pid)
        segs = tuple(
            Segment(s["p_vaddr"], s["p_offset"], s["p_filesz"], s["p_memsz"], bool(s["p_flags"] & 1))
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
        )
        return ElfInfo(FileKey.of(os.fstat(f.fileno())), elf["e_machine"], elf["e_type"], segs)
    except ResolveError:
        raise
    except (ELFError, ValueError, KeyError, OSError, EOFError) as err:
        raise ResolveError("binary", f"{binary.shown}: not a readable ELF file ({err})", binary.pid) from err


def _sym(s: object, table: str) -> Symbol:
    return Symbol(
        s.name,  # type: ignore[attr-defined]
        s["st_value"],  # type: ignore[index]
        s["st_size"],  # type: ignore[index]
        s["st_info"]["type"],  # type: ignore[index]
        table,
    )


def _defined(s: object) -> bool:
    return bool(s["st_shndx"] != SHN_UNDEF and s["st_value"] != 0)  # type: ignore[index]


def lookup(binary: Binary, name: str) -> list[Symbol]:
    """The defined symbols ``name`` of ``binary``. A global in .dynsym, found through its hash
    table, is the answer (as gdb's ``break malloc`` takes it); otherwise both tables are scanned
    once per file (libjvm's 58k-symbol .symtab: about a second) and the scan is cached."""
    elf_info(binary)  # a file that is no ELF is the binary's fault, not the symbol's
    with open_checked(binary) as f:
        try:
            elf = ELFFile(f)
            dynsym = elf.get_section_by_name(".dynsym")
            for hname, cls in ((".gnu.hash", GNUHashSection), (".hash", ELFHashSection)):
                sec = elf.get_section_by_name(hname)
                if isinstance(sec, cls) and dynsym is not None:
                    s = sec.get_symbol(name)
                    if s is not None and _defined(s):
                        return [_sym(s, ".dynsym")]
                    break
        except (ELFError, ValueError, KeyError, OSError, EOFError) as err:
            why = f"{binary.shown}: cannot read its symbols ({err})"
            raise ResolveError("symbol", why, binary.pid) from err
    return list(_scanned(binary).get(name, []))


def _scanned(binary: Binary) -> dict[str, list[Symbol]]:
    info = elf_info(binary)
    if info._scanned is None:
        with open_checked(binary) as f:
            try:
                info._scanned = _scan(ELFFile(f), [".dynsym", ".symtab"], binary)
            except ResolveError:
                raise
            except (ELFError, ValueError, KeyError, OSError, EOFError) as err:
                raise ResolveError(
                    "symbol", f"{binary.shown}: cannot read its symbols ({err})", binary.pid
                ) from err
    return info._scanned


def _scan(elf: ELFFile, tables: list[str], binary: Binary) -> dict[str, list[Symbol]]:
    out: dict[str, list[Symbol]] = {}
    for tname in tables:
        sec = elf.get_section_by_name(tname)
        if not isinstance(sec, SymbolTableSection):
            continue
        if sec.num_symbols() > MAX_SYMBOLS:
            raise ResolveError(
                "symbol", f"{binary.shown}: {tname} has more than {MAX_SYMBOLS} symbols", binary.pid
            )
        for s in sec.iter_symbols():
            if s.name and _defined(s):
                sym = _sym(s, tname)
                lst = out.setdefault(s.name, [])
                if all(x.value != sym.value for x in lst):
                    lst.append(sym)
    return out


def symbol_names(binary: Binary) -> list[str]:
    """Every defined function name (for "did you mean")."""
    try:
        table = _scanned(binary)
    except ResolveError:
        return []
    return sorted(n for n, syms in table.items() if any(s.type in FUNC_TYPES for s in syms))


MAX_HINT_CANDIDATES = 2000


def did_you_mean(name: str, names: list[str]) -> str | None:
    """The closest of ``names``, at a bounded cost: difflib over 58k names (libjvm) takes a
    second, so only names of about the same length sharing a 3-byte prefix or suffix compete."""
    head, tail = name[:3], name[-3:]
    cands = [n for n in names if abs(len(n) - len(name)) <= 3 and (n.startswith(head) or n.endswith(tail))]
    close = difflib.get_close_matches(name, cands[:MAX_HINT_CANDIDATES], n=1)
    return close[0] if close else None


def check_symbol_text(name: str) -> None:
    """Refuse a symbol a rule cannot mean: empty, too long, control or NUL bytes, spaces."""
    why = symbol_problem(name)
    if why is not None:
        raise ResolveError("symbol", why)


def function_site(binary: Binary, name: str, retprobe: bool = False) -> Site:
    """Where to put the uprobe (or uretprobe) for function ``name`` in ``binary``."""
    check_symbol_text(name)
    syms = [s for s in lookup(binary, name) if s.type in FUNC_TYPES or s.type == "STT_NOTYPE"]
    if not syms:
        others = lookup(binary, name)
        if others:
            raise ResolveError(
                "symbol",
                f"{name!r} in {binary.shown} is a {_TYPE_WORDS.get(others[0].type, others[0].type)}, "
                "not a function",
                binary.pid,
            )
        close = did_you_mean(name, symbol_names(binary))
        hint = f"; did you mean {close!r}?" if close else ""
        raise ResolveError("symbol", f"no function {name!r} in {binary.shown}{hint}", binary.pid)
    values = {s.value for s in syms}
    if len(values) > 1:
        raise ResolveError(
            "symbol",
            f"{name!r} names {len(values)} different functions in {binary.shown} (static functions "
            "of several files); it is ambiguous",
            binary.pid,
        )
    sym = syms[0]
    if any(s.type in IFUNC_TYPES for s in syms):
        raise ResolveError(
            "symbol",
            f"{name!r} in {binary.shown} is an IFUNC: its address is the resolver, which runs once "
            "at load time; probe the implementation it picks (e.g. __" + name + "_avx2)",
            binary.pid,
        )
    info = elf_info(binary)
    off = info.to_offset(sym.value)
    if off is None or not info.executable_at(sym.value):
        raise ResolveError(
            "symbol", f"{name!r} in {binary.shown} is not in an executable segment", binary.pid
        )
    return Site(binary, off, sym.value, name, retprobe)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
