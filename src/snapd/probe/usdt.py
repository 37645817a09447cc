"""USDT probes (SystemTap SDT, <sys/sdt.h>): read from ``.note.stapsdt`` and compiled to data.

Each ``STAP_PROBE`` site is an ELF note (owner ``stapsdt``, type 3) whose descriptor holds three
addresses (the probe's pc, the link-time address of ``.stapsdt.base`` and the semaphore's
address, 0 for none) and three strings: provider, name and the argument specification, one
operand per argument in the assembler's syntax (``-4@%eax 8@-16(%rbp) -4@$5``;
https://sourceware.org/systemtap/wiki/UserSpaceProbeImplementation). A probe name may have
several sites (inlined copies), each with its own operands.

No C is ever written for a probe (bcc's USDT support generates a C function per probe; snapd's
program must be the same whatever the rule says). Each operand is compiled into a fixed-shape
:class:`ArgSpec` (kind, size, signedness, pt_regs offsets of its registers, a displacement)
that ``usdt_arg_value`` in uprobe.bpf.c interprets from a map; :func:`pack` gives the bytes of
``struct usdt_arg``.

Semaphores are not written here: the uprobe is registered with the semaphore's file offset as
its reference counter (perf_event_open's uprobe ``ref_ctr_offset``, kernel/events/uprobes.c
update_ref_ctr), and the kernel increments it in exactly the processes the uprobe is installed in
and decrements it when the uprobe goes, even if snapd dies (see docs/triggers-design.md).
"""

from __future__ import annotations

import difflib
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from snapd.probe import symbols
from snapd.probe.symbols import Binary, FileKey, ResolveError
from snapd.rules.probespec import PROBE_NAME_RE, probe_problem

NOTE_SECTION = ".note.stapsdt"
BASE_SECTION = ".stapsdt.base"
NOTE_OWNER = "stapsdt"
NT_STAPSDT = 3
MAX_NOTES = 1 << 16  # libjvm has 531
MAX_NOTE_BYTES = 16 << 20
MAX_ARGS = 12  # <sys/sdt.h> STAP_PROBE12 is the largest
MAX_SPEC = 1024  # characters of one site's argument string
_CACHED = 32


class ArgKind(IntEnum):
    """``struct usdt_arg.kind`` in uprobe.bpf.c."""

    NONE = 0  # the operand could not be compiled: reading it is refused at rule load
    CONST = 1  # $imm: the value is ``disp``
    REG = 2  # %reg: the register's low ``size`` bytes
    MEM = 3  # disp(%base[,%index[,scale]]): ``size`` bytes at base + index * scale + disp
    IPREL = 4  # sym+disp(%rip): ``size`` bytes at the probe's runtime pc + disp


# struct pt_regs (arch/x86/include/asm/ptrace.h), which starts struct user_regs_struct too
PT_REGS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
)  # fmt: skip
_OFF = {name: 8 * i for i, name in enumerate(PT_REGS)}
_LEGACY = {
    "ax": "rax",
    "bx": "rbx",
    "cx": "rcx",
    "dx": "rdx",
    "si": "rsi",
    "di": "rdi",
    "bp": "rbp",
    "sp": "rsp",
}


def _register(name: str) -> tuple[int, int] | None:
    """(pt_regs offset, width in bytes) of an x86-64 general register name, None if unknown."""
    if name in _OFF and name not in ("orig_rax", "rip", "cs", "eflags", "ss"):
        return _OFF[name], 8
    m = re.fullmatch(r"r(8|9|1[0-5])([dwb]?)", name)
    if m:
        return _OFF["r" + m.group(1)], {"": 8, "d": 4, "w": 2, "b": 1}[m.group(2)]
    if len(name) == 3 and name[0] == "e" and name[1:] in _LEGACY:
        return _OFF[_LEGACY[name[1:]]], 4
    if name in _LEGACY:
        return _OFF[_LEGACY[name]], 2
    low8 = {
        "al": "ax",
        "bl": "bx",
        "cl": "cx",
        "dl": "dx",
        "sil": "si",
        "dil": "di",
        "bpl": "bp",
        "spl": "sp",
    }
    if name in low8:
        return _OFF[_LEGACY[low8[name]]], 1
    return None


@dataclass(frozen=True)
class ArgSpec:
    """One operand, compiled: what ``struct usdt_arg`` holds."""

    kind: ArgKind
    size: int  # 1, 2, 4 or 8 bytes
    signed: bool
    reg: int = 0  # pt_regs offset of the register (REG) or base register (MEM)
    index: int = 0  # pt_regs offset of the index register (MEM with scale > 0)
    scale: int = 0  # 0: no index register
    disp: int = 0  # CONST: the value; MEM: displacement; IPREL: target address - probe pc
    text: str = ""
    why: str = ""  # kind NONE: why it could not be compiled


ARG_STRUCT = struct.Struct("<BBBBHHq")  # kind, size, signed, scale, reg, index, disp: 16 bytes


def pack(args: tuple[ArgSpec, ...]) -> bytes:
    """The ``struct usdt_arg[MAX_ARGS]`` bytes for a site (unused slots zero: kind NONE)."""
    out = b"".join(ARG_STRUCT.pack(a.kind, a.size, a.signed, a.scale, a.reg, a.index, a.disp) for a in args)
    return out + b"\0" * (ARG_STRUCT.size * (MAX_ARGS - len(args)))


@dataclass(frozen=True)
class Site:
    """One USDT probe site of a file."""

    provider: str
    name: str
    pc: int  # link-time address of the probe's nop (prelink-adjusted)
    offset: int  # its file offset: where the uprobe goes
    semaphore: int  # link-time address of the semaphore (0: none)
    semaphore_offset: int  # its file offset: the uprobe's ref_ctr_offset (0: none)
    args: tuple[ArgSpec, ...]
    args_text: str

    @property
    def full_name(self) -> str:
        return f"{self.provider}:{self.name}"


_NUM = r"-?(?:0[xX][0-9a-fA-F]+|[0-9]+)"
_ARG_RE = re.compile(r"(?:(?P<size>-?[0-9]+)@)?(?P<op>.+)")
_MEM_RE = re.compile(
    r"(?P<disp>[^()]*)\((?P<base>%[a-z0-9]+)?(?:,(?P<index>%[a-z0-9]+)(?:,(?P<scale>[1248]))?)?\)"
)
_DISP_SYM = re.compile(rf"(?:(?P<pre>{_NUM})\+)?(?P<sym>[A-Za-z_.$][A-Za-z0-9_.$@]*)(?P<post>[+-][0-9]+)?")


def _int(text: str) -> int:
    neg = text.startswith("-")
    body = text[1:] if neg else text
    v = int(body, 16) if body[:2].lower() == "0x" else int(body, 10)
    return -v if neg else v


def parse_arg(text: str, pc: int = 0, resolve: symbols.SymbolResolver | None = None) -> ArgSpec:
    """Compile one operand (``-4@%eax``, ``8@-16(%rbp)``, ``-4@$5``, ``8@NBuffers(%rip)``).

    ``pc`` is the site's link-time address and ``resolve`` looks a symbol up (its link-time
    address), both needed for %rip-relative operands only. An operand that cannot be compiled
    gives kind NONE with the reason: a rule that reads that argument is refused, others are not.
    """
    m = _ARG_RE.fullmatch(text)
    if not m:
        return ArgSpec(ArgKind.NONE, 8, False, text=text, why="empty operand")
    size_s, op = m.group("size"), m.group("op")
    size, signed = 8, False
    if size_s is not None:
        n = int(size_s)
        size, signed = abs(n), n < 0
        if size not in (1, 2, 4, 8):
            return ArgSpec(ArgKind.NONE, 8, False, text=text, why=f"operand size {n} is not 1, 2, 4 or 8")

    def none(why: str) -> ArgSpec:
        return ArgSpec(ArgKind.NONE, size, signed, text=text, why=why)

    if op.startswith("$"):
        if not re.fullmatch(_NUM, op[1:]):
            return none(f"immediate {op!r} is not a number")
        v = _int(op[1:])
        return ArgSpec(ArgKind.CONST, size, signed, disp=_wrap(v), text=text)
    if op.startswith("%"):
        r = _register(op[1:])
        if r is None:
            return none(f"register {op!r} cannot be read (not a general-purpose register)")
        return ArgSpec(ArgKind.REG, min(size, r[1]), signed, reg=r[0], text=text)
    mm = _MEM_RE.fullmatch(op)
    if not mm:
        return none(f"operand {op!r} is not in a form snapd reads")
    disp_s = mm.group("disp")
    breg = mm.group("base")
    if breg == "%rip":
        if mm.group("index"):
            return none("%rip cannot take an index register")
        ds = _DISP_SYM.fullmatch(disp_s)
        if not ds:
            return none(f"%rip-relative {disp_s!r} names no symbol (snapd reads sym+N(%rip) forms)")
        if resolve is None:
            return none(f"symbol {ds.group('sym')!r} of a %rip-relative operand was not looked up")
        addr = resolve(ds.group("sym"))
        if addr is None:
            return none(f"symbol {ds.group('sym')!r} of a %rip-relative operand is not in the file")
        addr += _int(ds.group("pre") or "0") + int(ds.group("post") or "0")
        return ArgSpec(ArgKind.IPREL, size, signed, disp=_wrap(addr - pc), text=text)
    if disp_s and not re.fullmatch(_NUM, disp_s):
        return none(f"displacement {disp_s!r} is not a number")
    disp = _int(disp_s) if disp_s else 0
    if breg is None:
        return none("absolute memory operands are not supported")
    rb = _register(breg[1:])
    if rb is None or rb[1] != 8:
        return none(f"base register {breg!r} is not a 64-bit general-purpose register")
    index, scale = 0, 0
    if mm.group("index"):
        ri = _register(mm.group("index")[1:])
        if ri is None or ri[1] != 8:
            return none(f"index register {mm.group('index')!r} is not a 64-bit general-purpose register")
        index, scale = ri[0], int(mm.group("scale") or "1")
    return ArgSpec(
        ArgKind.MEM, size, signed, reg=rb[0], index=index, scale=scale, disp=_wrap(disp), text=text
    )


def _wrap(v: int) -> int:
    """``v`` as a signed 64-bit value (displacements are computed modulo 2^64 on x86-64)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def split_args(text: str) -> list[str]:
    """Operands are separated by spaces; none contains one (sys/sdt.h uses %n constraints)."""
    return text.split()


_cache: OrderedDict[FileKey, tuple[Site, ...]] = OrderedDict()
_lock = threading.Lock()


def read_sites(binary: Binary) -> tuple[Site, ...]:
    """Every USDT site of ``binary`` (cached per file identity)."""
    with _lock:
        hit = _cache.get(binary.key)
        if hit is not None:
            _cache.move_to_end(binary.key)
            return hit
    sites = _read(binary)
    with _lock:
        _cache[binary.key] = sites
        while len(_cache) > _CACHED:
            _cache.popitem(last=False)
    return sites


def _read(binary: Binary) -> tuple[Site, ...]:
    info = symbols.elf_info(binary)
    if info.machine != "EM_X86_64":
        raise ResolveError("probe", f"{binary.shown}: USDT operands of {info.machine} are not supported yet")

    def resolve(name: str) -> int | None:
        syms = symbols.lookup(binary, name)
        return syms[0].value if syms else None

    out: list[Site] = []
    with symbols.open_checked(binary) as f:
        try:
            elf = ELFFile(f)
            sec = elf.get_section_by_name(NOTE_SECTION)
            if not isinstance(sec, NoteSection):
                return ()
            if sec["sh_size"] > MAX_NOTE_BYTES:
                raise ResolveError(
                    "probe", f"{binary.shown}: {NOTE_SECTION} is larger than {MAX_NOTE_BYTES} bytes"
                )
            bsec = elf.get_section_by_name(BASE_SECTION)
            actual_base = bsec["sh_addr"] if bsec is not None else None
            for i, note in enumerate(sec.iter_notes()):
                if i >= MAX_NOTES:
                    raise ResolveError("probe", f"{binary.shown}: more than {MAX_NOTES} USDT notes")
                if note["n_name"] != NOTE_OWNER or note["n_descsz"] < 24:
                    continue
                site = _site(bytes(note["n_descdata"]), actual_base, info, resolve)
                if site is not None:
                    out.append(site)
        except ResolveError:
            raise
        except (ELFError, ValueError, KeyError, OSError, EOFError, struct.error) as err:
            raise ResolveError("probe", f"{binary.shown}: cannot read its USDT notes ({err})") from err
    return tuple(out)


def _site(
    desc: bytes, actual_base: int | None, info: symbols.ElfInfo, resolve: symbols.SymbolResolver
) -> Site | None:
    pc, base, sem = struct.unpack_from("<QQQ", desc)
    strings = desc[24:].split(b"\0")
    if len(strings) < 3:
        return None
    provider, name, args_b = (s.decode("utf-8", "replace") for s in strings[:3])
    if not PROBE_NAME_RE.fullmatch(provider) or not PROBE_NAME_RE.fullmatch(name):
        return None
    # A prelinked file moved .stapsdt.base: the note holds the old link-time addresses.
    if actual_base is not None and base:
        delta = actual_base - base
        pc += delta
        if sem:
            sem += delta
    offset = info.to_offset(pc)
    if offset is None or not info.executable_at(pc):
        return None
    sem_off = info.to_offset(sem) if sem else 0
    if sem and sem_off is None:
        return None
    ops = split_args(args_b[:MAX_SPEC])[:MAX_ARGS]
    args = tuple(parse_arg(o, pc, resolve) for o in ops)
    return Site(provider, name, pc, offset, sem, sem_off or 0, args, args_b)


def check_probe_text(spec: str) -> tuple[str, str]:
    """``provider:name`` -> (provider, name); ResolveError(key "probe") when malformed."""
    why = probe_problem(spec)
    if why is not None:
        raise ResolveError("probe", why)
    provider, _, name = spec.partition(":")
    return provider, name


def find(binary: Binary, spec: str) -> tuple[Site, ...]:
    """The sites of probe ``provider:name`` in ``binary``; ResolveError when it has none."""
    provider, name = check_probe_text(spec)
    sites = read_sites(binary)
    hits = tuple(s for s in sites if s.provider == provider and s.name == name)
    if hits:
        return hits
    if not sites:
        raise ResolveError("probe", f"{binary.shown} has no USDT probes ({NOTE_SECTION})", binary.pid)
    names = sorted({s.full_name for s in sites})
    close = difflib.get_close_matches(spec, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; it has {len(names)}, e.g. {names[0]!r}"
    raise ResolveError("probe", f"no USDT probe {spec!r} in {binary.shown}{hint}", binary.pid)


def uncompiled(sites: tuple[Site, ...], nargs: int) -> str | None:
    """Why argument 0..nargs-1 cannot be read at some site (None: all can)."""
    for s in sites:
        if nargs > len(s.args):
            return f"{s.full_name} has {len(s.args)} argument(s) at {s.pc:#x}, arg{len(s.args)} is used"
        for i, a in enumerate(s.args[:nargs]):
            if a.kind is ArgKind.NONE:
                return f"{s.full_name} arg{i} ({a.text}) at {s.pc:#x}: {a.why}"
    return None
