"""The `when` language: tokenizer, recursive-descent parser, AST and postfix compiler.

Grammar (lowest precedence first)::

    expr  := conj ("or" conj)*
    conj  := neg ("and" neg)*
    neg   := "not" neg | "(" expr ")" | cmp
    cmp   := operand OP operand          OP: == != < <= > >=
           | NAME ("==" | "!=" | "~" | "contains") STRING
    operand := NAME | INT | DURATION | SIZE | ERRNO | "-" (INT | ERRNO)

A string comparison (``path ~ "/etc/ssl/*"``, ``data contains "FATAL"``) names a string of the
event (snapd.rules.sysargs: ``path``, ``data``, a ``const char *`` argument's name); its pattern
(snapd.rules.patterns) is matched in the kernel and the result is boolean field ``strK``, the
K-th string comparison of the expression (at most :data:`MAX_STRS`). A name that is none of the
fields is looked up with the ``aliases`` the caller gives (a syscall's named arguments).

One side of a comparison is a name (arg0..arg5, ret, errno, latency, pid, tid, uid), the other a
constant. Nothing here is ever evaluated by Python or pasted into C: :func:`compile_expr` turns the
AST into a list of fixed-shape instructions that probe.bpf.c interprets (``eval_pred``), a
boolean stack machine of at most :data:`MAX_INSNS` steps.
"""

from __future__ import annotations

import errno as _errno
import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as _dcfield
from enum import IntEnum
from typing import ClassVar, NamedTuple

from snapd.rules import patterns as _pat
from snapd.rules.bounds import MAX_INSNS, MAX_STACK, MAX_TEXT
from snapd.units import DURATION_NS, SIZE_BYTES

S64_MIN, S64_MAX = -(1 << 63), (1 << 63) - 1
MAX_STRS = 4  # string comparisons per expression (fields str0..str3)


class Insn(IntEnum):
    CMP = 1
    AND = 2
    OR = 3
    NOT = 4


class Field(IntEnum):
    ARG0 = 0
    ARG1 = 1
    ARG2 = 2
    ARG3 = 3
    ARG4 = 4
    ARG5 = 5
    RET = 6
    ERRNO = 7
    LATENCY = 8
    PID = 9
    TID = 10
    UID = 11
    STR0 = 12  # the outcome (0 or 1) of the expression's first string comparison
    STR1 = 13
    STR2 = 14
    STR3 = 15
    # A USDT probe's operands past the sixth (<sys/sdt.h> has up to 12): usdt triggers only.
    ARG6 = 16
    ARG7 = 17
    ARG8 = 18
    ARG9 = 19
    ARG10 = 20
    ARG11 = 21


#: arg0..arg11 in order: the Nth is argN
ARGS = (
    *(Field(Field.ARG0 + i) for i in range(6)),
    *(Field(Field.ARG6 + i) for i in range(6)),
)
#: what only a USDT probe has
USDT_ONLY = frozenset(ARGS[6:])
STRS = frozenset({Field.STR0, Field.STR1, Field.STR2, Field.STR3})


def arg_index(f: Field) -> int | None:
    """N for argN, None for any other field."""
    return ARGS.index(f) if f in ARGS else None


class Op(IntEnum):
    EQ = 0
    NE = 1
    LT = 2
    LE = 3
    GT = 4
    GE = 5


OPS = {"==": Op.EQ, "!=": Op.NE, "<": Op.LT, "<=": Op.LE, ">": Op.GT, ">=": Op.GE}
OP_TEXT = {v: k for k, v in OPS.items()}
# a OP b  ==  b MIRROR[OP] a
MIRROR = {Op.EQ: Op.EQ, Op.NE: Op.NE, Op.LT: Op.GT, Op.LE: Op.GE, Op.GT: Op.LT, Op.GE: Op.LE}
NAMES = {f.name.lower(): f for f in Field if f not in STRS}
STR_OPS = {"==": _pat.Mode.EQUAL, "!=": _pat.Mode.EQUAL, "~": _pat.Mode.GLOB, "contains": _pat.Mode.CONTAINS}
EXIT_FIELDS = frozenset({Field.RET, Field.ERRNO, Field.LATENCY})
KEYWORDS = frozenset({"and", "or", "not", "contains"})
#: a name that is no field -> the N of argN it stands for, an error message, or None (unknown)
Aliases = Callable[[str], "int | str | None"]


class ExprError(Exception):
    """A problem at character offset ``pos`` (0-based) of the expression text."""

    def __init__(self, pos: int, msg: str) -> None:
        super().__init__(msg)
        self.pos = pos
        self.msg = msg


class Token(NamedTuple):
    kind: str  # "name", "int", "dur", "size", "str", "op", "(", ")", "-", "end"
    text: str
    pos: int
    value: int = 0


_TOKEN = re.compile(
    r"\s*(?:(?P<num>0[xX][0-9a-fA-F]+|[0-9]+)(?P<unit>[a-zA-Z]+)?"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>==|!=|<=|>=|<|>|~)|(?P<punct>[()-]))"
)


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            out.append(Token("end", "", pos))
            return out
        if text[pos] == '"':
            out.append(_string(text, pos))
            pos = out[-1].value
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            ch = text[pos]
            hint = " (use 'and', 'or', 'not')" if ch in "&|!=" else ""
            raise ExprError(pos, f"unexpected character {ch!r}{hint}")
        start = m.start("num") if m.group("num") else m.start(m.lastgroup or 0)
        if m.group("num"):
            num, unit = m.group("num"), m.group("unit")
            value = int(num, 16) if num[:2].lower() == "0x" else int(num, 10)
            if unit is None:
                out.append(Token("int", m.group(0).strip(), start, value))
            elif unit in DURATION_NS and not num.lower().startswith("0x"):
                out.append(Token("dur", m.group(0).strip(), start, value * DURATION_NS[unit]))
            elif unit in SIZE_BYTES and not num.lower().startswith("0x"):
                out.append(Token("size", m.group(0).strip(), start, value * SIZE_BYTES[unit]))
            else:
                raise ExprError(
                    start,
                    f"bad unit {unit!r} in {m.group(0).strip()!r}; durations take "
                    + ", ".join(DURATION_NS)
                    + "; sizes take "
                    + ", ".join(SIZE_BYTES),
                )
        elif m.group("name"):
            out.append(Token("name", m.group("name"), start))
        elif m.group("op"):
            out.append(Token("op", m.group("op"), start))
        else:
            p = m.group("punct")
            out.append(Token(p, p, start))
        pos = m.end()


def _string(text: str, start: int) -> Token:
    """The string literal at ``text[start] == '"'``: Token("str", body, start, end). The body
    keeps the pattern escapes (snapd.rules.patterns); ``\\"`` is a quote, as ``\\x22``."""
    i = start + 1
    body: list[str] = []
    while i < len(text):
        c = text[i]
        if c == '"':
            return Token("str", "".join(body), start, i + 1)
        if c == "\\" and i + 1 < len(text):
            body.append("\\x22" if text[i + 1] == '"' else text[i : i + 2])
            i += 2
            continue
        body.append(c)
        i += 1
    raise ExprError(start, "unterminated string: missing '\"'")


@dataclass(frozen=True)
class Expr:
    def uses_exit(self) -> bool:
        raise NotImplementedError

    def fields(self) -> frozenset[Field]:
        raise NotImplementedError


@dataclass(frozen=True)
class Cmp(Expr):
    field: Field
    op: Op
    value: int

    def uses_exit(self) -> bool:
        return self.field in EXIT_FIELDS

    def fields(self) -> frozenset[Field]:
        return frozenset({self.field})

    def __str__(self) -> str:
        return f"{self.field.name.lower()} {OP_TEXT[self.op]} {self.value}"


@dataclass(frozen=True)
class StrCmp(Expr):
    """``name OP "pattern"``: string comparison ``index`` of its expression (field strINDEX)."""

    index: int
    name: str  # path, data or an argument's name
    pattern: _pat.Pattern
    negate: bool = False  # !=
    pos: int = _dcfield(default=0, compare=False)  # of the name, in the expression's text

    def uses_exit(self) -> bool:
        return False

    def fields(self) -> frozenset[Field]:
        return frozenset({Field(Field.STR0 + self.index)})

    def __str__(self) -> str:
        op = "!=" if self.negate else self.pattern.mode.value
        return f"{self.name} {op} {self.pattern.text!r}"


@dataclass(frozen=True)
class _Logical(Expr):
    """``left WORD right``: what And and Or share."""

    left: Expr
    right: Expr
    word: ClassVar[str] = ""

    def uses_exit(self) -> bool:
        return self.left.uses_exit() or self.right.uses_exit()

    def fields(self) -> frozenset[Field]:
        return self.left.fields() | self.right.fields()

    def __str__(self) -> str:
        return f"({self.left} {self.word} {self.right})"


@dataclass(frozen=True)
class And(_Logical):
    word: ClassVar[str] = "and"


@dataclass(frozen=True)
class Or(_Logical):
    word: ClassVar[str] = "or"


@dataclass(frozen=True)
class Not(Expr):
    operand: Expr

    def uses_exit(self) -> bool:
        return self.operand.uses_exit()

    def fields(self) -> frozenset[Field]:
        return self.operand.fields()

    def __str__(self) -> str:
        return f"not {self.operand}"


class _Operand(NamedTuple):
    kind: str  # "field", "int", "dur", "size", "errno"
    pos: int
    field: Field | None = None
    value: int = 0


class _Parser:
    def __init__(self, text: str, aliases: Aliases | None = None) -> None:
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0
        self.aliases = aliases
        self.strs = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "end":
            self.i += 1
        return t

    def is_word(self, word: str) -> bool:
        t = self.peek()
        return t.kind == "name" and t.text == word

    def parse(self) -> Expr:
        e = self.disj()
        t = self.peek()
        if t.kind != "end":
            raise ExprError(t.pos, f"unexpected {t.text!r}; expected 'and', 'or' or the end")
        return e

    def disj(self) -> Expr:
        e = self.conj()
        while self.is_word("or"):
            self.take()
            e = Or(e, self.conj())
        return e

    def conj(self) -> Expr:
        e = self.neg()
        while self.is_word("and"):
            self.take()
            e = And(e, self.neg())
        return e

    def neg(self) -> Expr:
        self.depth += 1
        if self.depth > 64:
            raise ExprError(self.peek().pos, "expression nested too deeply")
        try:
            if self.is_word("not"):
                self.take()
                return Not(self.neg())
            if self.peek().kind == "(":
                open_tok = self.take()
                e = self.disj()
                t = self.take()
                if t.kind != ")":
                    raise ExprError(t.pos if t.kind != "end" else open_tok.pos, "unbalanced '(': missing ')'")
                return e
            return self.cmp()
        finally:
            self.depth -= 1

    def operand(self) -> _Operand:
        t = self.take()
        if t.kind == "-":
            n = self.take()
            if n.kind == "int":
                return _Operand("int", t.pos, value=-n.value)
            if n.kind == "name" and n.text.startswith("E") and n.text.isupper():
                return _Operand("int", t.pos, value=-self.errno_value(n))
            raise ExprError(n.pos, "'-' must be followed by a number or an errno name")
        if t.kind == "int":
            return _Operand("int", t.pos, value=t.value)
        if t.kind in ("dur", "size"):
            return _Operand(t.kind, t.pos, value=t.value)
        if t.kind == "name":
            if t.text in NAMES:
                return _Operand("field", t.pos, field=NAMES[t.text])
            alias = self.aliases(t.text) if self.aliases is not None and not t.text.isupper() else None
            if isinstance(alias, str):
                raise ExprError(t.pos, alias)
            if alias is not None:
                return _Operand("field", t.pos, field=Field(alias))
            if t.text in KEYWORDS:
                raise ExprError(t.pos, f"expected a comparison before {t.text!r}")
            if t.text.isupper() and t.text.startswith("E"):
                return _Operand("errno", t.pos, value=self.errno_value(t))
            raise ExprError(
                t.pos,
                f"unknown name {t.text!r}; use arg0..arg5 (arg11 for usdt), ret, errno, latency, "
                "pid, tid, uid, numbers, durations (500ms), sizes (1GiB) or errno names (EPIPE)",
            )
        if t.kind == "end":
            raise ExprError(t.pos, "expression ends early; expected a name or a number")
        raise ExprError(t.pos, f"unexpected {t.text!r}; expected a name or a number")

    @staticmethod
    def errno_value(t: Token) -> int:
        value = getattr(_errno, t.text, None)
        if not isinstance(value, int) or t.text not in _errno.errorcode.values():
            raise ExprError(t.pos, f"unknown errno name {t.text!r}")
        return value

    def strcmp(self) -> StrCmp | None:
        """``NAME OP STRING`` at the current token, or None (not a string comparison)."""
        name, op = self.peek(), self.toks[min(self.i + 1, len(self.toks) - 1)]
        lit = self.toks[min(self.i + 2, len(self.toks) - 1)]
        is_op = op.kind == "op" or (op.kind == "name" and op.text == "contains")
        if name.kind != "name" or not is_op or op.text not in STR_OPS:
            return None
        if lit.kind != "str":
            if op.text in ("~", "contains"):
                raise ExprError(lit.pos, f"'{op.text}' takes a string in double quotes")
            return None
        self.i += 3
        if self.strs >= MAX_STRS:
            raise ExprError(name.pos, f"at most {MAX_STRS} string comparisons in one expression")
        try:
            pattern = _pat.parse(lit.text, STR_OPS[op.text])
        except _pat.PatternError as err:
            raise ExprError(lit.pos + 1 + err.pos, err.msg) from err
        self.strs += 1
        return StrCmp(self.strs - 1, name.text, pattern, op.text == "!=", name.pos)

    def cmp(self) -> Expr:
        sc = self.strcmp()
        if sc is not None:
            return sc
        left = self.operand()
        t = self.peek()
        if t.kind != "op" or t.text == "~":
            what = repr(t.text) if t.kind != "end" else "the end"
            raise ExprError(t.pos, f"expected a comparison (== != < <= > >=) before {what}")
        self.take()
        op = OPS[t.text]
        right = self.operand()
        nxt = self.peek()
        if nxt.kind == "op":
            raise ExprError(nxt.pos, "comparisons do not chain; join them with 'and'")
        if left.kind == "field" and right.kind != "field":
            field_side, const, cop = left, right, op
        elif right.kind == "field" and left.kind != "field":
            field_side, const, cop = right, left, MIRROR[op]
        elif left.kind == "field":
            raise ExprError(right.pos, "compare a name with a constant, not with another name")
        else:
            raise ExprError(
                left.pos,
                "a comparison needs a name (arg0..arg5, ret, errno, latency, pid, tid, uid) on one side",
            )
        assert field_side.field is not None
        fld = field_side.field
        if const.kind == "dur" and fld != Field.LATENCY:
            raise ExprError(const.pos, "a duration only compares with latency")
        if fld == Field.LATENCY and const.kind in ("errno", "size"):
            raise ExprError(const.pos, "latency compares with a duration such as 500ms")
        if const.kind == "errno" and fld not in (Field.ERRNO, Field.RET):
            raise ExprError(const.pos, "an errno name compares with errno (or ret, negated)")
        if not S64_MIN <= const.value <= S64_MAX:
            raise ExprError(const.pos, "number out of range for a signed 64-bit value")
        return Cmp(fld, cop, const.value)


def parse(text: str, aliases: Aliases | None = None) -> Expr:
    """Parse ``text``; raise :class:`ExprError` (with a character offset) when it is wrong."""
    if len(text) > MAX_TEXT:
        raise ExprError(MAX_TEXT, f"expression longer than {MAX_TEXT} characters")
    if not text.strip():
        raise ExprError(0, "empty expression")
    return _Parser(text, aliases).parse()


def strings(e: Expr) -> list[StrCmp]:
    """The string comparisons of ``e``, by index."""
    if isinstance(e, StrCmp):
        return [e]
    if isinstance(e, _Logical):
        return sorted(strings(e.left) + strings(e.right), key=lambda s: s.index)
    if isinstance(e, Not):
        return strings(e.operand)
    return []


class Instruction(NamedTuple):
    kind: Insn
    field: int = 0
    op: int = 0
    k: int = 0


def compile_expr(expr: Expr) -> list[Instruction]:
    """Postfix code for ``eval_pred``; raises ExprError(0, ...) when it does not fit."""
    out: list[Instruction] = []
    depth = 0
    max_depth = 0

    def emit(e: Expr) -> None:
        nonlocal depth, max_depth
        if isinstance(e, Cmp):
            out.append(Instruction(Insn.CMP, int(e.field), int(e.op), e.value))
            depth += 1
        elif isinstance(e, StrCmp):
            op = Op.NE if e.negate else Op.EQ
            out.append(Instruction(Insn.CMP, Field.STR0 + e.index, int(op), 1))
            depth += 1
        elif isinstance(e, Not):
            emit(e.operand)
            out.append(Instruction(Insn.NOT))
        elif isinstance(e, (And, Or)):
            emit(e.left)
            emit(e.right)
            out.append(Instruction(Insn.AND if isinstance(e, And) else Insn.OR))
            depth -= 1
        else:  # pragma: no cover - the parser makes only these
            raise TypeError(type(e).__name__)
        max_depth = max(max_depth, depth)

    emit(expr)
    if len(out) > MAX_INSNS or max_depth > MAX_STACK:
        raise ExprError(
            0,
            f"expression too large for the in-kernel predicate: it needs {len(out)} steps "
            f"(comparisons, and/or/not), at most {MAX_INSNS} fit",
        )
    return out
