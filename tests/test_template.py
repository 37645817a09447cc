"""Core names from a template (snapd.template): the grammar and its messages, each specifier,
and the one safe name whatever the fields hold. No root (tests/store/test_store_paths.py
checks the names against a real cores directory)."""

from __future__ import annotations

import pytest

from snapd.template import (
    DEFAULT_TEMPLATE,
    MAX_NAME,
    SPECIFIERS,
    NameFields,
    TemplateError,
    expand,
    grammar_problem,
    name_problem,
    safe_name,
    sanitize,
    validate_template,
)

F = NameFields(pid=4242, comm="nginx", rule="slow-write", seq=17, host="web1", when=1795741518.9)
KNOWN = " ".join(f"%{k}" for k in SPECIFIERS)


def test_every_specifier() -> None:
    assert expand("%t", F) == "1795741518"
    assert expand("%T", F) == "20261127T010518Z"
    assert expand("%p", F) == "4242"
    assert expand("%e", F) == "nginx"
    assert expand("%r", F) == "slow-write"
    assert expand("%n", F) == "17"
    assert expand("%h", F) == "web1"
    assert expand("core%%", F) == "core_"  # a literal %, which is no file name character
    assert expand(DEFAULT_TEMPLATE, F) == "core.slow-write.nginx.4242.1795741518.17"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("", "empty"),
        ("core%", "ends with a lone '%'; write '%%' for a percent sign"),
        ("core.%x", f"unknown specifier '%x'; use {KNOWN} or %%"),
        ("%E", f"unknown specifier '%E'; use {KNOWN} or %%"),
        ("%%%", "ends with a lone '%'; write '%%' for a percent sign"),
    ],
)
def test_grammar_problems(template: str, problem: str) -> None:
    assert grammar_problem(template) == problem
    assert name_problem(template) == problem
    with pytest.raises(TemplateError) as exc:
        validate_template(template)
    assert str(exc.value) == f"core name template {template!r}: {problem}"
    assert exc.value.template == template


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("cores/%p", "core name must not contain '/' (cores are stored flat in the core directory)"),
        ("core..%p", "core name must not contain '..'"),
        (".core.%p", "core name must not start with '.'"),
    ],
)
def test_what_a_rule_may_not_ask_for(template: str, problem: str) -> None:
    """name_problem() is the rule loader's check; the store accepts the grammar alone and makes
    the name safe anyway."""
    assert name_problem(template) == problem
    assert grammar_problem(template) is None
    assert "/" not in expand(template, F) and not expand(template, F).startswith(".")


def test_fields_are_sanitized() -> None:
    hostile = NameFields(pid=1, comm="../../etc/\x1b[2J\n", rule="r ü", seq=1, host="h/x", when=0.0)
    assert sanitize("a/b c\0d") == "a_b_c_d"
    assert sanitize("x..y...z") == "x_y_z"
    assert expand("%e", hostile) == "____etc___2J_"  # every '..' run and '/' is a '_'
    assert expand("..%p", hostile) == "_1"
    assert expand("%r.%h", hostile) == "r__.h_x"


def test_safe_name_last_line_of_defence() -> None:
    assert safe_name("") == "core"
    assert safe_name(".") == "core"
    assert safe_name("...") == "_"
    assert safe_name("-rf") == "rf"  # never taken for an option
    assert safe_name(".hidden") == "hidden"
    assert safe_name("core.") == "core"
    assert safe_name("x" * 500) == "x" * MAX_NAME
    assert safe_name("a" * (MAX_NAME - 1) + "..b") == "a" * (MAX_NAME - 1) + "_"
