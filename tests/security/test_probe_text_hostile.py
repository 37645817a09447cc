"""Hostile text in the fields of function and usdt triggers (binary, symbol, probe): every odd
byte gives exactly one clear, printable error line, from the loader or, for text it accepts,
from arming the rule as root (the symbol is not in the file); never a traceback, never C."""

from __future__ import annotations

import pytest

from snapd.probe.probes import Probes
from snapd.rules import RuleError, parse_rule

pytestmark = pytest.mark.kernel
ODD = [chr(b) for b in range(1, 256) if not chr(b).isalnum()] + ["\u202e", "\ufeff", "é"]


def yaml_quoted(s: str) -> str:
    """``s`` as a YAML double-quoted scalar, every non-alphanumeric byte escaped."""
    return '"' + "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in s) + '"'


def rules_with(field: str) -> list[tuple[str, str]]:
    out = []
    for c in ODD:
        if field == "symbol":
            trig = f"  function: {{binary: libc.so.6, symbol: {yaml_quoted('mal' + c + 'loc')}}}\n"
        elif field == "binary":
            trig = f"  function: {{binary: {yaml_quoted('/usr/lib/x' + c + 'y')}, symbol: malloc}}\n"
        else:
            trig = f"  usdt: {{binary: /usr/bin/python3.11, probe: {yaml_quoted('python:fu' + c + 'nc')}}}\n"
        out.append((c, f"name: h\ntarget: {{comm: x}}\ntrigger:\n{trig}"))
    return out


def one_line(err: RuleError) -> None:
    text = str(err)
    assert text.startswith("h.yaml:4:") and "\n" not in text and text.isprintable(), text


@pytest.mark.parametrize("field", ["symbol", "binary", "probe"])
def test_odd_bytes_give_one_error_line(field: str) -> None:
    accepted = []
    for c, text in rules_with(field):
        rule, errors = parse_rule(text.encode(), "h.yaml")
        if rule is None:
            assert len(errors) == 1, (repr(c), [str(e) for e in errors])
            assert str(errors[0]).startswith("h.yaml:") and str(errors[0]).isprintable(), str(errors[0])
        else:
            accepted.append((c, rule))
    # Control bytes, NUL, invisible characters (and spaces, but in a path) are refused by the
    # loader: what is left is printable text.
    assert all(c.isprintable() and (c != " " or field == "binary") for c, _ in accepted)
    if not accepted:
        return
    assert len(accepted) < len(ODD)
    pytest.importorskip("bcc")
    with Probes() as p:
        for c, rule in accepted:
            with pytest.raises(RuleError) as ei:
                p.load(rule)
            one_line(ei.value)
            assert f"trigger.{rule.kind.value}.{field}: " in ei.value.msg, (repr(c), str(ei.value))
        assert p.loaded() == []


def test_ten_thousand_function_rules_refused_within_bounds() -> None:
    """More rules than slots: the first 64 arm (no targets: nothing attached), the rest are refused
    at once with one line each, without resolving anything more."""
    pytest.importorskip("bcc")
    with Probes() as p:
        refused = 0
        for i in range(10_000):
            rule, errs = parse_rule(
                f"name: f{i}\ntarget: {{comm: nothing-{i}}}\ntrigger:\n"
                "  function: {binary: libc.so.6, symbol: malloc}\n".encode(),
                f"f{i}.yaml",
            )
            assert rule is not None, errs
            try:
                p.load(rule)
            except RuleError as err:
                assert "too many rules loaded" in err.msg
                refused += 1
        assert len(p.loaded()) == 64 and refused == 10_000 - 64


def test_odd_bytes_in_string_patterns() -> None:
    """Every odd character in a `path ~` / `data contains` pattern is either data the kernel
    matches (the rule arms: rows, no C) or one error line at the pattern's column."""
    accepted = []
    for c in ODD:
        for op, sc in (("~", "openat"), ("contains", "write")):
            name = "path" if sc == "openat" else "data"
            when = yaml_quoted(f'{name} {op} "a{c}b"')
            text = f"name: h\ntarget: {{comm: x}}\ntrigger:\n  syscall: {sc}\n  when: {when}\n"
            rule, errors = parse_rule(text.encode(), "h.yaml")
            if rule is None:
                assert len(errors) == 1, (repr(c), [str(e) for e in errors])
                assert str(errors[0]).startswith("h.yaml:5:") and str(errors[0]).isprintable(), str(errors[0])
            else:
                accepted.append(rule)
    assert len(accepted) > 100
    pytest.importorskip("bcc")
    with Probes() as p:
        for rule in accepted:
            p.load(rule)
            p.unload(rule.name)
