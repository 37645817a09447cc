"""String patterns of the `when` language: ``path ~ "/etc/ssl/*"``, ``data contains "FATAL"``.

A pattern is matched in the kernel, byte by byte, over at most :data:`STR_BYTES` bytes of the
target's memory (snapd.probe.strings compiles it into shift-and masks). This module parses and
bounds the text, so that ``snapd check`` reports a bad pattern at its column.

Syntax: ``*`` matches any run of bytes (also none), ``?`` exactly one byte; ``\\*``, ``\\?`` and
``\\\\`` are the literal characters, ``\\xHH`` the byte HH (how a rule, whose text may hold no
control characters, names bytes 0x01-0x1f, 0x7f and non-UTF-8 bytes). Everything else is
literal, as its UTF-8 bytes (so ``?`` stands for one *byte* of a multi-byte character). The NUL
byte can never match (C strings end there; refused). ``contains`` takes a literal: no wildcards,
escapes allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

STR_BYTES = 256  # bytes of the target's string or buffer that are read and matched
MAX_ELEMENTS = 63  # pattern positions: the kernel's state is one u64 (bit 63: accept)
MAX_TEXT = 1024  # characters of a pattern's text


class PatternError(Exception):
    """A problem at character offset ``pos`` (0-based) of the pattern text."""

    def __init__(self, pos: int, msg: str) -> None:
        super().__init__(msg)
        self.pos = pos
        self.msg = msg


class Mode(str, Enum):
    EQUAL = "=="  # the whole string equals the literal
    GLOB = "~"  # the whole string matches the glob
    CONTAINS = "contains"  # the literal occurs somewhere in the bytes read


class Elem(Enum):
    ANY = "?"
    STAR = "*"


#: one position: a literal byte (0x01..0xff), or ANY, or STAR
Element = int | Elem


@dataclass(frozen=True)
class Pattern:
    """A parsed, bounded pattern, anchored at both ends (``contains`` becomes ``*lit*``)."""

    mode: Mode
    text: str
    elements: tuple[Element, ...]

    @property
    def tail_star(self) -> bool:
        """Ends with ``*``: a string cut at STR_BYTES can still be judged by its start."""
        return bool(self.elements) and self.elements[-1] is Elem.STAR

    def __str__(self) -> str:
        return f"{self.mode.value} {self.text!r}"


def _unescape(text: str, wildcards: bool) -> list[Element]:
    out: list[Element] = []
    i = 0
    raw = text
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            if i + 1 >= len(raw):
                raise PatternError(i, "pattern ends with a lone '\\' (write '\\\\' for a backslash)")
            n = raw[i + 1]
            if n in "\\*?":
                out.append(ord(n))
                i += 2
                continue
            if n == "x":
                hh = raw[i + 2 : i + 4]
                if len(hh) != 2 or any(h not in "0123456789abcdefABCDEF" for h in hh):
                    raise PatternError(i, "'\\x' takes two hex digits, like \\x1b")
                b = int(hh, 16)
                if b == 0:
                    raise PatternError(i, "a pattern cannot hold the NUL byte (strings end there)")
                out.append(b)
                i += 4
                continue
            raise PatternError(i, f"unknown escape '\\{n}'; use \\\\, \\*, \\? or \\xHH")
        if c == "\0":
            raise PatternError(i, "a pattern cannot hold the NUL byte (strings end there)")
        if wildcards and c == "*":
            if not out or out[-1] is not Elem.STAR:  # '**' is '*'
                out.append(Elem.STAR)
        elif wildcards and c == "?":
            out.append(Elem.ANY)
        else:
            out.extend(c.encode("utf-8", "surrogateescape"))
        i += 1
    return out


def parse(text: str, mode: Mode) -> Pattern:
    """Parse ``text`` as a pattern of ``mode``; raise :class:`PatternError` when it is wrong."""
    if len(text) > MAX_TEXT:
        raise PatternError(MAX_TEXT, f"pattern longer than {MAX_TEXT} characters")
    if mode is Mode.CONTAINS:
        lit = _unescape(text, wildcards=False)
        if not lit:
            raise PatternError(0, "'contains' needs a non-empty string")
        elems: list[Element] = [Elem.STAR, *lit, Elem.STAR]
    else:
        elems = _unescape(text, wildcards=mode is Mode.GLOB)
    if len(elems) > MAX_ELEMENTS:
        extra = " (with the two implied '*')" if mode is Mode.CONTAINS else ""
        raise PatternError(
            0,
            f"pattern too long for the in-kernel matcher: {len(elems)} positions{extra}, at most "
            f"{MAX_ELEMENTS} (a byte, '?' or a run of '*' each)",
        )
    return Pattern(mode, text, tuple(elems))


def matches(p: Pattern, data: bytes, truncated: bool = False) -> bool:
    """What the kernel's matcher answers for ``data`` (the reference the BPF code is tested
    against). ``truncated``: ``data`` is the start of a longer string."""
    states = {0}

    def close(st: set[int]) -> set[int]:
        out = set(st)
        for s in st:
            if s < len(p.elements) and p.elements[s] is Elem.STAR:
                out.add(s + 1)
        return out

    states = close(states)
    for b in data[:STR_BYTES]:
        nxt: set[int] = set()
        for s in states:
            if s >= len(p.elements):
                continue
            e = p.elements[s]
            if e is Elem.STAR:
                nxt.add(s)
            elif e is Elem.ANY or e == b:
                nxt.add(s + 1)
        states = close(nxt)
        if not states:
            return False
    hit = len(p.elements) in states
    return hit and (not truncated or p.tail_star)
