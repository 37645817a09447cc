"""Composing a rule file strictly: bytes -> UTF-8 text -> one YAML node tree with marks.

The file is composed, never constructed: ``yaml.compose`` gives nodes with line/column marks that
:mod:`snapd.rules.builder` reads against the schema. Anchors and aliases are refused outright
(which also rules out "billion laughs" expansion), and every YAML, reader and encoding error
becomes one error at a line and column.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import Node

from snapd.rules.schema import Ctx


class _Refused(yaml.MarkedYAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses anchors and aliases while composing."""

    kind = "rule file"

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                problem=f"YAML aliases (*name) are not allowed in {self.kind}s",
                problem_mark=getattr(event, "start_mark", None),
            )
        if getattr(event, "anchor", None) is not None:
            raise _Refused(
                problem=f"YAML anchors (&name) are not allowed in {self.kind}s",
                problem_mark=getattr(event, "start_mark", None),
            )
        node: Node | None = super().compose_node(parent, index)
        return node


def decode(path: str, data: bytes, ctx: Ctx) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        col = err.start - (before.rfind(b"\n") + 1) + 1
        ctx.err_at(line, col, f"not UTF-8 (byte 0x{data[err.start]:02x}); {ctx.kind}s are UTF-8 text")
        return None


def _loader(kind: str) -> type[_StrictLoader]:
    if kind == _StrictLoader.kind:
        return _StrictLoader
    return type("_KindLoader", (_StrictLoader,), {"kind": kind})


def compose(text: str, ctx: Ctx, *, allow_empty: bool = False) -> Node | None:
    """The node tree of ``text``, or None after recording why not. ``allow_empty``: a file
    of comments only is no error (it is None; the caller's defaults apply)."""
    try:
        node: Node | None = yaml.compose(text, Loader=_loader(ctx.kind))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        msg = err.problem or err.context or "YAML syntax error"
        if err.context and err.problem and not isinstance(err, _Refused):
            msg = f"{err.problem} ({err.context})"
        if mark is None:
            ctx.err_at(1, 1, f"YAML: {msg}")
        else:
            ctx.err_at(mark.line + 1, mark.column + 1, msg if isinstance(err, _Refused) else f"YAML: {msg}")
        return None
    except yaml.reader.ReaderError as err:
        before = text[: err.position]
        line = before.count("\n") + 1
        col = err.position - (before.rfind("\n") + 1) + 1
        ctx.err_at(line, col, f"character {err.character!r} is not allowed in YAML")
        return None
    except yaml.YAMLError as err:
        ctx.err_at(1, 1, f"YAML: {err}")
        return None
    except RecursionError:
        ctx.err_at(1, 1, "YAML nested too deeply")
        return None
    if node is None and not allow_empty:
        ctx.err_at(1, 1, f"empty {ctx.kind}; see docs/rules.md for the keys")
    return node
