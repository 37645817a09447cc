"""The `when` language alone (snapd.rules.expr): text -> tokens -> AST -> the postfix code that
probe.bpf.c interprets, its bounds, and every error with the offset it names. No root, no YAML
(tests/rules/test_loader.py checks the same errors placed at file:line:col)."""

from __future__ import annotations

import errno

import pytest

from snapd.rules.bounds import MAX_INSNS, MAX_TEXT
from snapd.rules.expr import (
    And,
    Cmp,
    ExprError,
    Field,
    Insn,
    Instruction,
    Not,
    Op,
    Or,
    compile_expr,
    parse,
    tokenize,
)

MS = 1_000_000


def code(text: str) -> list[tuple[str, ...] | str]:
    """The postfix code, readable: ("arg0", "==", "1") for a comparison, "and"/"or"/"not"."""
    out: list[tuple[str, ...] | str] = []
    for ins in compile_expr(parse(text)):
        if ins.kind == Insn.CMP:
            op = {Op.EQ: "==", Op.NE: "!=", Op.LT: "<", Op.LE: "<=", Op.GT: ">", Op.GE: ">="}[Op(ins.op)]
            out.append((Field(ins.field).name.lower(), op, str(ins.k)))
        else:
            out.append(ins.kind.name.lower())
    return out


def test_tokens() -> None:
    toks = tokenize("arg0==0x1F and latency>=2ms or not(-1<ret)")
    assert [(t.kind, t.text, t.pos, t.value) for t in toks] == [
        ("name", "arg0", 0, 0),
        ("op", "==", 4, 0),
        ("int", "0x1F", 6, 31),
        ("name", "and", 11, 0),
        ("name", "latency", 15, 0),
        ("op", ">=", 22, 0),
        ("dur", "2ms", 24, 2 * MS),
        ("name", "or", 28, 0),
        ("name", "not", 31, 0),
        ("(", "(", 34, 0),
        ("-", "-", 35, 0),
        ("int", "1", 36, 1),
        ("op", "<", 37, 0),
        ("name", "ret", 38, 0),
        (")", ")", 41, 0),
        ("end", "", 42, 0),
    ]


@pytest.mark.parametrize(
    ("text", "postfix"),
    [
        ("arg0 == 1", [("arg0", "==", "1")]),
        ("arg5 != 0x10", [("arg5", "!=", "16")]),
        ("errno == EPIPE", [("errno", "==", str(errno.EPIPE))]),
        ("ret == -EAGAIN", [("ret", "==", str(-errno.EAGAIN))]),
        ("ret < -1", [("ret", "<", "-1")]),
        ("latency > 500ms", [("latency", ">", str(500 * MS))]),
        ("latency <= 2s", [("latency", "<=", str(2000 * MS))]),
        ("pid >= 1 and tid != 2 and uid == 0", [
            ("pid", ">=", "1"), ("tid", "!=", "2"), "and", ("uid", "==", "0"), "and",
        ]),
        # and binds tighter than or; both group to the left
        ("arg0 == 1 or arg1 == 2 and arg2 == 3", [
            ("arg0", "==", "1"), ("arg1", "==", "2"), ("arg2", "==", "3"), "and", "or",
        ]),
        ("(arg0 == 1 or arg1 == 2) and arg2 == 3", [
            ("arg0", "==", "1"), ("arg1", "==", "2"), "or", ("arg2", "==", "3"), "and",
        ]),
        ("not arg0 == 1 and arg1 == 2", [("arg0", "==", "1"), "not", ("arg1", "==", "2"), "and"]),
        ("not not (ret < 0)", [("ret", "<", "0"), "not", "not"]),
        # a constant on the left: the comparison is mirrored
        ("5 < arg0", [("arg0", ">", "5")]),
        ("5 <= arg0", [("arg0", ">=", "5")]),
        ("5 > arg0", [("arg0", "<", "5")]),
        ("5 >= arg0", [("arg0", "<=", "5")]),
        ("EPIPE == errno", [("errno", "==", str(errno.EPIPE))]),
        ("-1 != ret", [("ret", "!=", "-1")]),
        ("arg0 == 9223372036854775807", [("arg0", "==", str((1 << 63) - 1))]),
        ("arg0 == -9223372036854775808", [("arg0", "==", str(-(1 << 63)))]),
    ],
)  # fmt: skip
def test_postfix_code(text: str, postfix: list[tuple[str, ...] | str]) -> None:
    assert code(text) == postfix


def test_ast_and_what_it_needs() -> None:
    e = parse("arg2 > 4096 and not (errno == EPIPE or latency > 1ms)")
    assert e == And(
        Cmp(Field.ARG2, Op.GT, 4096),
        Not(Or(Cmp(Field.ERRNO, Op.EQ, errno.EPIPE), Cmp(Field.LATENCY, Op.GT, MS))),
    )
    assert e.uses_exit() and e.fields() == {Field.ARG2, Field.ERRNO, Field.LATENCY}
    assert str(e) == f"(arg2 > 4096 and not (errno == {errno.EPIPE} or latency > {MS}))"
    enter_only = parse("arg0 == 3 and pid != 1")
    assert not enter_only.uses_exit()  # decided at the syscall's entry
    assert compile_expr(enter_only) == [
        Instruction(Insn.CMP, Field.ARG0, Op.EQ, 3),
        Instruction(Insn.CMP, Field.PID, Op.NE, 1),
        Instruction(Insn.AND),
    ]


def comparisons(n: int) -> str:
    return " or ".join(f"arg0 == {i}" for i in range(n))


def test_the_in_kernel_bounds() -> None:
    fits = (MAX_INSNS + 1) // 2  # n comparisons joined by or: 2n - 1 steps
    assert len(compile_expr(parse(comparisons(fits)))) == 2 * fits - 1 <= MAX_INSNS
    with pytest.raises(ExprError) as exc:
        compile_expr(parse(comparisons(fits + 1)))
    assert exc.value.pos == 0
    assert exc.value.msg == (
        f"expression too large for the in-kernel predicate: it needs {2 * fits + 1} steps "
        f"(comparisons, and/or/not), at most {MAX_INSNS} fit"
    )
    nots = "not " * (MAX_INSNS - 1) + "arg0 == 1"
    assert len(compile_expr(parse(nots))) == MAX_INSNS
    with pytest.raises(ExprError, match="needs 17 steps"):
        compile_expr(parse("not " + nots))


def test_the_text_bounds() -> None:
    parse("arg0 == 1" + " " * (MAX_TEXT - 9))
    with pytest.raises(ExprError) as exc:
        parse("arg0 == 1" + " " * (MAX_TEXT - 8))
    assert (exc.value.pos, exc.value.msg) == (MAX_TEXT, f"expression longer than {MAX_TEXT} characters")
    parse("(" * 63 + "arg0 == 1" + ")" * 63)
    with pytest.raises(ExprError) as exc:
        parse("(" * 64 + "arg0 == 1" + ")" * 64)
    assert (exc.value.pos, exc.value.msg) == (64, "expression nested too deeply")  # the comparison, 65 deep


KNOWN = (
    "use arg0..arg5 (arg11 for usdt), ret, errno, latency, pid, tid, uid, numbers, durations (500ms), "
    "sizes (1GiB) or errno names (EPIPE)"
)
NEEDS_NAME = "a comparison needs a name (arg0..arg5, ret, errno, latency, pid, tid, uid) on one side"


@pytest.mark.parametrize(
    ("text", "pos", "msg"),
    [
        ("", 0, "empty expression"),
        ("   ", 0, "empty expression"),
        ("arg0 = 1", 5, "unexpected character '=' (use 'and', 'or', 'not')"),
        ("arg0 == 1 && ret < 0", 10, "unexpected character '&' (use 'and', 'or', 'not')"),
        ("arg0 == 1 || ret < 0", 10, "unexpected character '|' (use 'and', 'or', 'not')"),
        ("!(arg0 == 1)", 0, "unexpected character '!' (use 'and', 'or', 'not')"),
        ("arg0 == 1;", 9, "unexpected character ';'"),
        ("arg0 == 'x'", 8, 'unexpected character "\'"'),
        (
            "latency > 5parsecs",
            10,
            "bad unit 'parsecs' in '5parsecs'; durations take ns, us, ms, s, m, h, d"
            "; sizes take B, K, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB, TB",
        ),
        (
            "latency > 0x10ms",
            10,
            "bad unit 'ms' in '0x10ms'; durations take ns, us, ms, s, m, h, d"
            "; sizes take B, K, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB, TB",
        ),
        ("arg0 == 1 arg1 == 2", 10, "unexpected 'arg1'; expected 'and', 'or' or the end"),
        ("arg0 == 1)", 9, "unexpected ')'; expected 'and', 'or' or the end"),
        ("(arg0 == 1", 0, "unbalanced '(': missing ')'"),
        ("((arg0 == 1) arg1", 13, "unbalanced '(': missing ')'"),
        ("arg0 == -", 9, "'-' must be followed by a number or an errno name"),
        ("arg0 == -arg1", 9, "'-' must be followed by a number or an errno name"),
        ("arg0 == - 5ms", 10, "'-' must be followed by a number or an errno name"),
        ("and == 1", 0, "expected a comparison before 'and'"),
        ("arg0 == 1 or not", 16, "expression ends early; expected a name or a number"),
        ("arg0 == or", 8, "expected a comparison before 'or'"),
        ("import os", 0, f"unknown name 'import'; {KNOWN}"),
        ("arg12 == 1", 0, f"unknown name 'arg12'; {KNOWN}"),
        ("Errno == 1", 0, f"unknown name 'Errno'; {KNOWN}"),
        ("arg0 ==", 7, "expression ends early; expected a name or a number"),
        ("arg0 == )", 8, "unexpected ')'; expected a name or a number"),
        ("== 1", 0, "unexpected '=='; expected a name or a number"),
        ("errno == EPIPPE", 9, "unknown errno name 'EPIPPE'"),
        ("ret == -ENOPE", 8, "unknown errno name 'ENOPE'"),
        ("arg0", 4, "expected a comparison (== != < <= > >=) before the end"),
        ("arg0 and ret < 0", 5, "expected a comparison (== != < <= > >=) before 'and'"),
        ("0 < ret < 5", 8, "comparisons do not chain; join them with 'and'"),
        ("pid == tid", 7, "compare a name with a constant, not with another name"),
        ("1 == 2", 0, NEEDS_NAME),
        ("EPIPE == 1", 0, NEEDS_NAME),
        ("arg1 > 5s", 7, "a duration only compares with latency"),
        ("5s < ret", 0, "a duration only compares with latency"),
        ("latency > EPIPE", 10, "latency compares with a duration such as 500ms"),
        ("arg0 == EPIPE", 8, "an errno name compares with errno (or ret, negated)"),
        ("arg0 == 9223372036854775808", 8, "number out of range for a signed 64-bit value"),
        ("arg0 == 0x1" + "0" * 16, 8, "number out of range for a signed 64-bit value"),
        ("arg0 == -9223372036854775809", 8, "number out of range for a signed 64-bit value"),
    ],
)
def test_every_error_names_its_offset(text: str, pos: int, msg: str) -> None:
    with pytest.raises(ExprError) as exc:
        compile_expr(parse(text))
    assert (exc.value.pos, exc.value.msg) == (pos, msg)
    assert str(exc.value) == msg and "\n" not in msg
