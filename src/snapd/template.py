"""Core file names from a template, like core(5)'s ``core_pattern`` but always a single safe name.

The one definition of the template: its grammar, its default, its expansion. The rule loader
checks ``action.core.name`` with :func:`name_problem` (grammar, and a shape a rule author can
mean: flat, visible); the store checks every template it is given with
:func:`validate_template` (grammar) and expands it with :func:`expand`, which makes any template
a safe name whatever the shape.

Specifiers: ``%t`` unix time, ``%T`` ISO 8601 basic UTC time (``20261127T010203Z``), ``%p`` pid,
``%e`` comm, ``%r`` rule, ``%n`` catalog sequence number, ``%h`` host name, ``%%`` a literal
``%`` (which, like every character outside ``[A-Za-z0-9._+-]``, is written as ``_``).

Every expansion and the literal text are sanitized, and the result is checked again as a whole:
the name is one directory entry inside the cores directory, never ``.``/``..``, never containing
``/``, never starting with ``.`` (so it can neither be hidden nor collide with the writer's
``.snapd-partial.*`` temp files) nor ``-`` (so it is never taken for an option by gdb or a shell
tool). ``comm`` and the rule name are chosen by the target or by a rule author, so they are
untrusted input here.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from snapd.errors import SnapdError

DEFAULT_TEMPLATE = "core.%r.%e.%p.%t.%n"

SPECIFIERS: dict[str, str] = {
    "t": "unix time of the snapshot, in seconds",
    "T": "UTC time of the snapshot, ISO 8601 basic format (20261127T010203Z)",
    "p": "pid of the target",
    "e": "comm of the target (sanitized)",
    "r": "name of the rule that fired (sanitized)",
    "n": "catalog sequence number (unique per state directory)",
    "h": "host name (sanitized)",
}

# NAME_MAX is 255 (include/uapi/linux/limits.h); keep room for a uniqueness suffix.
MAX_NAME = 200

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_DOTS = re.compile(r"\.{2,}")


class TemplateError(SnapdError):
    """A core name template is malformed (unknown ``%`` specifier, trailing ``%``)."""

    def __init__(self, template: str, msg: str) -> None:
        super().__init__(f"core name template {template!r}: {msg}")
        self.template = template


@dataclass(frozen=True)
class NameFields:
    """The values a template can refer to."""

    pid: int
    comm: str
    rule: str
    seq: int
    host: str
    when: float


def sanitize(text: str) -> str:
    """Map ``text`` onto ``[A-Za-z0-9._+-]``: all else (``/``, NUL, space, UTF-8) becomes ``_``."""
    return _DOTS.sub("_", _UNSAFE.sub("_", text))


def grammar_problem(template: str) -> str | None:
    """Why ``template`` is not a template (empty, an unknown or dangling ``%``), or None."""
    if not template:
        return "empty"
    i = 0
    while i < len(template):
        if template[i] == "%":
            if i + 1 >= len(template):
                return "ends with a lone '%'; write '%%' for a percent sign"
            spec = template[i + 1]
            if spec != "%" and spec not in SPECIFIERS:
                known = " ".join(f"%{k}" for k in SPECIFIERS)
                return f"unknown specifier '%{spec}'; use {known} or %%"
            i += 2
        else:
            i += 1
    return None


def name_problem(template: str) -> str | None:
    """:func:`grammar_problem`, and what a rule's ``core.name`` must not be: cores are stored
    flat in one directory and never hidden (``.``), so no ``/``, no ``..``, no leading ``.``."""
    if "/" in template:
        return "core name must not contain '/' (cores are stored flat in the core directory)"
    if ".." in template:
        return "core name must not contain '..'"
    if template.startswith("."):
        return "core name must not start with '.'"
    return grammar_problem(template)


def validate_template(template: str) -> None:
    """Raise :class:`TemplateError` if ``template`` uses an unknown or dangling ``%`` specifier."""
    why = grammar_problem(template)
    if why:
        raise TemplateError(template, why)


def _iso_basic(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def expand(template: str, fields: NameFields) -> str:
    """Expand ``template`` into one safe file name (see the module docstring)."""
    validate_template(template)
    values = {
        "t": str(int(fields.when)),
        "T": _iso_basic(fields.when),
        "p": str(int(fields.pid)),
        "e": fields.comm,
        "r": fields.rule,
        "n": str(int(fields.seq)),
        "h": fields.host,
        "%": "%",
    }
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "%":
            out.append(sanitize(values[template[i + 1]]))
            i += 2
        else:
            out.append(sanitize(ch))
            i += 1
    return safe_name("".join(out))


def safe_name(name: str) -> str:
    """The last line of defence: whatever came in, return a single, visible, bounded name."""
    name = sanitize(name).lstrip(".-")
    name = name[:MAX_NAME].rstrip(".")
    if not name:
        name = "core"
    return name
