"""The core-content vocabulary (Solaris coreadm(1M) classes, mapped to Linux VMAs), and the
snapshot modes.

Shared by the rule language (``action.core.content``, ``action.snapshot``) and the core writer
(``snapd gcore -c``, ``--snapshot``): this module only parses and names;
:mod:`snapd.core.select` decides per mapping.

A spec is terms joined by ``+`` (add) and ``-`` (remove), read left to right:
``default``, ``default-shm``, ``anon+elfhdr``, ``all-dontdump``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from snapd.errors import ContentError

#: Each class and what it selects; the order is the order of ``snapd gcore --help``.
CLASSES: dict[str, str] = {
    "anon": "private anonymous memory (malloc arenas, thread stacks are 'stack')",
    "heap": "the brk heap ([heap])",
    "stack": "the main stack and every thread's stack",
    "shm": "SysV shm, shared anonymous, memfd and tmpfs shared mappings",
    "shfile": "shared mappings of regular files",
    "data": "private file mappings that were written (.data, .bss, relro)",
    "text": "executable file mappings",
    "rodata": "read-only, unwritten private file mappings",
    "elfhdr": "the first page of each mapped ELF file (build-ids)",
    "vdso": "[vdso], [vvar] and [vsyscall]",
    "hugetlb": "hugetlbfs mappings",
    "dontdump": "mappings marked MADV_DONTDUMP (otherwise always left out)",
}

#: Names that stand for a set of classes rather than one.
AGGREGATES: dict[str, str] = {
    "default": "what the target's /proc/PID/coredump_filter selects (kernel default 0x33)",
    "all": "every class, including dontdump",
    "none": "nothing (headers and notes only)",
}

#: Names that change how, not what.
MODIFIERS: dict[str, str] = {
    "haltshared": "fork snapshots: copy shared mappings while halted (consistent, longer freeze)",
}

class SnapshotMode(str, Enum):
    """How the memory is copied: ``frozen``, with every thread halted while it is read;
    ``fork``, from a copy-on-write child forked while halted (docs/fork-snapshot.md); ``auto``,
    one or the other by the size of what there is to copy."""

    FROZEN = "frozen"
    FORK = "fork"
    AUTO = "auto"  # fork when the private memory to copy is big enough (snapd.core.strategy)


_TOKEN = re.compile(r"([+-]?)([a-z]+)")


@dataclass(frozen=True)
class ContentSpec:
    """A parsed content spec: ``terms`` are ``(op, name)`` with op ``+`` or ``-``."""

    text: str
    terms: tuple[tuple[str, str], ...]

    def mentions(self, name: str, op: str = "+") -> bool:
        return any(t == (op, name) for t in self.terms) or (
            op == "+" and any(t == ("+", "all") for t in self.terms)
        )

    def __str__(self) -> str:
        return self.text


#: The spec of ``default``: what the target's coredump_filter selects.
DEFAULT_CONTENT = ContentSpec("default", (("+", "default"),))


def valid_names() -> str:
    return ", ".join([*AGGREGATES, *CLASSES, *MODIFIERS])


def parse_spec(text: str) -> ContentSpec:
    """Parse ``text``; raise :class:`ContentError` naming the valid classes when it is wrong."""
    s = text.strip().lower()
    if not s:
        raise ContentError(text, f"empty; use one or more of: {valid_names()}")
    terms: list[tuple[str, str]] = []
    pos = 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or (pos > 0 and not m.group(1)):
            raise ContentError(
                text, f"unexpected {s[pos:]!r}; join classes with '+' or '-' (e.g. default-shm)"
            )
        op, name = m.group(1) or "+", m.group(2)
        if name not in CLASSES and name not in AGGREGATES and name not in MODIFIERS:
            raise ContentError(text, f"unknown class '{name}'; valid: {valid_names()}")
        terms.append((op, name))
        pos = m.end()
    return ContentSpec(text=s, terms=tuple(terms))
