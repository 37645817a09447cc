"""Typed, marked access to composed YAML nodes: each accessor checks one node against what the
schema wants there and records an error at its line and column when it is wrong.

Duplicate and unknown keys (with a "did you mean"), custom tags, control and invisible
characters in strings, out-of-range and oversized integers are refused here.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from snapd.rules.bounds import MAX_INT_CHARS, MAX_KEYS
from snapd.rules.error import RuleError
from snapd.units import UnitError, parse_duration, parse_size

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
SEQ = "tag:yaml.org,2002:seq"
MAP = "tag:yaml.org,2002:map"
KNOWN_TAGS = {
    STR: "a string",
    INT: "an integer",
    BOOL: "true/false",
    NULL: "nothing (null)",
    "tag:yaml.org,2002:float": "a fractional number",
    "tag:yaml.org,2002:timestamp": "a date",
    SEQ: "a list",
    MAP: "a mapping",
}
_CONSTRUCT = yaml.constructor.SafeConstructor()
T = TypeVar("T")


class Ctx:
    """Collects errors for one file so that `snapd check` can show them all. ``kind`` names
    the file in messages: the daemon's configuration is read with the same accessors."""

    def __init__(self, path: str, kind: str = "rule file") -> None:
        self.path = path
        self.kind = kind
        self.errors: list[RuleError] = []

    def err(self, node: Node, msg: str, offset: int = 0) -> None:
        m = node.start_mark
        self.errors.append(RuleError(self.path, m.line + 1, m.column + 1 + offset, msg))

    def err_at(self, line: int, col: int, msg: str) -> None:
        self.errors.append(RuleError(self.path, line, col, msg))


def quote_shift(node: Node) -> int:
    """Columns between a scalar's mark and its text: 1 for a quoted scalar (its quote)."""
    return 1 if isinstance(node, ScalarNode) and node.style in ("'", '"') else 0


def what(node: Node) -> str:
    return KNOWN_TAGS.get(node.tag, f"a {node.tag!r} value")


class Schema:
    """Typed accessors over nodes; each returns None (after recording an error) when wrong."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    def tags_ok(self, node: Node) -> bool:
        if node.tag not in KNOWN_TAGS:
            self.ctx.err(node, f"YAML tag {node.tag!r} is not allowed in {self.ctx.kind}s")
            return False
        return True

    def mapping(self, node: Node, where: str, keys: dict[str, bool]) -> dict[str, tuple[Node, Node]] | None:
        """Check a mapping's keys against ``keys`` (name -> required); return key -> (knode, vnode)."""
        if not self.tags_ok(node):
            return None
        if not isinstance(node, MappingNode):
            self.ctx.err(node, f"{where}: expected a mapping (key: value lines), got {what(node)}")
            return None
        out: dict[str, tuple[Node, Node]] = {}
        if len(node.value) > MAX_KEYS:
            self.ctx.err(node.value[MAX_KEYS][0], f"{where}: more than {MAX_KEYS} keys")
            return None
        for knode, vnode in node.value:
            if not isinstance(knode, ScalarNode) or knode.tag != STR:
                self.ctx.err(knode, f"{where}: keys must be plain names")
                continue
            key = knode.value
            if key in out:
                first = out[key][0].start_mark
                self.ctx.err(knode, f"{where}: duplicate key '{key}' (first at line {first.line + 1})")
                continue
            if key not in keys:
                close = difflib.get_close_matches(key, list(keys), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(keys)}"
                self.ctx.err(knode, f"{where}: unknown key '{key}'{hint}")
                continue
            out[key] = (knode, vnode)
        for key, required in keys.items():
            if required and key not in out:
                self.ctx.err(node, f"{where}: missing required key '{key}'")
        return out

    def scalar(self, node: Node, where: str, tag: str) -> Any:
        if not self.tags_ok(node):
            return None
        if not isinstance(node, ScalarNode) or node.tag != tag:
            want = KNOWN_TAGS[tag]
            got = what(node)
            hint = " (quote it)" if tag == STR and isinstance(node, ScalarNode) else ""
            if node.tag == NULL and isinstance(node, ScalarNode) and node.value == "":
                self.ctx.err(node, f"{where}: missing value; expected {want}")
            else:
                self.ctx.err(node, f"{where}: expected {want}, got {got}{hint}")
            return None
        if tag == STR:
            return node.value
        if tag == INT:
            # A huge integer would raise ValueError (int_max_str_digits) or cost quadratic time
            # (sexagesimal 1:2:3:...), and would not fit any field anyway.
            if len(node.value) > MAX_INT_CHARS:
                self.ctx.err(node, f"{where}: integer too large")
                return None
            try:
                return _CONSTRUCT.construct_yaml_int(node)
            except ValueError:
                self.ctx.err(node, f"{where}: not a valid integer")
                return None
        if tag == BOOL:
            return _CONSTRUCT.construct_yaml_bool(node)
        return node.value  # pragma: no cover

    def string(self, node: Node, where: str, max_len: int = 4096) -> str | None:
        s: str | None = self.scalar(node, where, STR)
        if s is None:
            return None
        if not s:
            self.ctx.err(node, f"{where}: must not be empty")
            return None
        if len(s) > max_len:
            self.ctx.err(node, f"{where}: longer than {max_len} characters")
            return None
        # Rule values end up in logs, `snapd check` and `snapd ctl rules`: besides C0 controls,
        # refuse DEL and the C1 controls (U+0080-U+009F: U+009B is CSI on some terminals) and
        # invisible format characters (Unicode category Cf: bidi overrides such as U+202E,
        # zero-width spaces, a BOM), which could disguise what a rule says.
        for c in s:
            if c != "\t" and unicodedata.category(c) == "Cc":
                self.ctx.err(node, f"{where}: control characters are not allowed")
                return None
            if unicodedata.category(c) == "Cf":
                self.ctx.err(node, f"{where}: invisible formatting character U+{ord(c):04X} is not allowed")
                return None
        return s

    def integer(self, node: Node, where: str, lo: int, hi: int) -> int | None:
        v: int | None = self.scalar(node, where, INT)
        if v is None:
            return None
        if not lo <= v <= hi:
            self.ctx.err(node, f"{where}: {v} is out of range ({lo}..{hi})")
            return None
        return v

    def unit(self, node: Node, where: str, parse: Callable[[str], T]) -> T | None:
        if isinstance(node, ScalarNode) and node.tag in (INT, "tag:yaml.org,2002:float"):
            self.ctx.err(node, f"{where}: {node.value} needs a unit, {_unit_hint(parse)}")
            return None
        s = self.string(node, where)
        if s is None:
            return None
        try:
            return parse(s)
        except UnitError as err:
            self.ctx.err(node, f"{where}: {err}")
            return None


def _unit_hint(parse: Callable[..., object]) -> str:
    if parse is parse_duration:
        return "e.g. 10s, 500ms or 5m"
    if parse is parse_size:
        return "e.g. 512MiB or 2GiB"
    return "e.g. 90%"
