"""String patterns compiled for the kernel's matcher (strings.bpf.c), and where strings are.

A :class:`~snapd.rules.patterns.Pattern` (validated by the rules stage) becomes the bytes of
``struct str_pattern``: a shift-and automaton over one u64 state, bit p meaning "the first p
positions of the pattern matched the bytes so far". ``chars[c]`` has bit p set when position p
accepts byte c (that literal, or ``?``), ``star`` has bit p set when position p is ``*``; the
kernel steps once per byte and accepts when bit ``accept`` is set after the last byte. Nothing
of the rule becomes code: the program is the same for every pattern.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from snapd.rules.patterns import MAX_ELEMENTS, STR_BYTES, Elem, Pattern
from snapd.rules.sysargs import StringArg

PF_TAIL_STAR = 1  # struct str_pattern.flags: a string cut at STR_BYTES may still match
_HEAD = struct.Struct("<QII")  # star, accept, flags
PATTERN_BYTES = _HEAD.size + 8 * 256
_SRC = struct.Struct("<BBBB4x")  # kind, ptr, len, pad: struct str_src


@dataclass(frozen=True)
class Matcher:
    star: int
    accept: int
    flags: int
    chars: tuple[int, ...]  # 256 masks

    def pack(self) -> bytes:
        return _HEAD.pack(self.star, self.accept, self.flags) + struct.pack("<256Q", *self.chars)


def compile_pattern(p: Pattern) -> Matcher:
    if len(p.elements) > MAX_ELEMENTS:  # the rules stage refuses these; never build a wrong mask
        raise ValueError(f"pattern of {len(p.elements)} positions")
    chars = [0] * 256
    star = 0
    for pos, e in enumerate(p.elements):
        bit = 1 << pos
        if e is Elem.STAR:
            star |= bit
        elif e is Elem.ANY:
            for c in range(1, 256):
                chars[c] |= bit
        else:
            assert isinstance(e, int) and 0 < e < 256
            chars[e] |= bit
    return Matcher(star, len(p.elements), PF_TAIL_STAR if p.tail_star else 0, tuple(chars))


def pack_source(src: StringArg) -> bytes:
    """The bytes of ``struct str_src``."""
    return _SRC.pack(int(src.source), src.ptr, src.length, 0)


__all__ = ["PATTERN_BYTES", "STR_BYTES", "Matcher", "compile_pattern", "pack_source"]
