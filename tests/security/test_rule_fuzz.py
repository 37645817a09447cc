"""Hypothesis against the rule loader with hostile values in every field of otherwise
well-formed rules, and with byte-level mutations of a valid rule. Complements
tests/rules/test_loader.py (300 random YAML documents, 300 random byte strings, 300 random
`when` texts): here the documents follow the schema, so the hostile values reach every
field's own validation, and whatever is accepted is checked to be plain typed data."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from snapd.rules import Rule, RuleError, SyscallTrigger, parse_rule
from snapd.rules.builder import NAME_RE, glob_problem
from snapd.rules.expr import MAX_INSNS, Field, Insn, Op, compile_expr
from snapd.template import NameFields, expand
from support.budget import parse_cpu

STRUCTURED_EXAMPLES = 1500
MUTATION_EXAMPLES = 1000

INJECT = [
    '"); system("id"); //',
    "*/ #include </etc/shadow> /*",
    "#define SNAPD_MAX_RULES 0",
    "$(id)",
    "`id`",
    "'; DROP TABLE cores; --",
    "%n%n%s",
    "{core}{__import__('os')}",
    "../../../../etc/passwd",
    "/proc/self/mem",
    "\x1b[2J\x1b]0;pwned\x07",
    "a\nb",
    "a\x00b",
    "\u202egnp",
    "\u200b",
    "\x9b2J",
    "\x7f",
    "x" * 5000,
    "9" * 5000,
    "0x" + "f" * 100,
    "1:2:3:4:5",
    "-0",
    "1e999",
    ".inf",
    "~",
]
hostile_text = st.one_of(
    st.sampled_from(INJECT),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.builds(lambda a, b: a + b, st.sampled_from(INJECT), st.text(max_size=8)),
)
hostile = st.one_of(
    hostile_text,
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.lists(hostile_text, max_size=3),
    st.dictionaries(hostile_text, hostile_text, max_size=2),
)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, often a hostile one."""
    return st.one_of(valid, valid, hostile)


def optional(d: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=d)


syscalls = st.sampled_from(["write", "read", "getppid", "openat", "fsync", "writev"])
target = optional(
    {
        "pid": field(st.integers(1, 1 << 22)),
        "comm": field(st.sampled_from(["nginx", "ngin*", "a?c", "x"])),
        "exe": field(st.sampled_from(["/usr/sbin/nginx", "/bin/true"])),
        "unit": field(st.sampled_from(["nginx.service", "a@b.service"])),
        "cgroup": field(st.sampled_from(["/system.slice/x.service", "/"])),
        "uid": field(st.integers(0, 65535)),
    }
)
syscall_trigger = st.fixed_dictionaries(
    {"syscall": field(st.one_of(syscalls, st.lists(syscalls, min_size=1, max_size=3, unique=True)))},
    optional={
        "when": field(st.sampled_from(["errno == EPIPE", "arg0 == 1 and ret < 0", "latency > 5ms"])),
        "count": field(st.integers(1, 200)),
        "within": field(st.sampled_from(["10s", "500ms"])),
    },
)
other_trigger = st.one_of(
    st.fixed_dictionaries({"every": field(st.sampled_from(["10s", "1m"]))}),
    st.fixed_dictionaries(
        {"cpu": field(optional({"above": field(st.just("90%")), "for": field(st.just("30s"))}))}
    ),
    st.fixed_dictionaries({"rss": field(optional({"above": field(st.just("2GiB"))}))}),
    st.fixed_dictionaries({"threads": field(optional({"above": field(st.integers(1, 1000))}))}),
)
action = optional(
    {
        "stop": field(st.sampled_from(["ptrace", "kernel"])),
        "snapshot": field(st.sampled_from(["frozen", "fork"])),
        "core": field(
            optional(
                {
                    "content": field(st.sampled_from(["default", "default-shm", "anon+heap"])),
                    "name": field(st.sampled_from(["core.%e.%p", "%r-%t", "c%%"])),
                    "repeat": field(st.integers(1, 100)),
                    "interval": field(st.just("5s")),
                }
            )
        ),
        "run": field(st.lists(st.sampled_from(["/bin/true", "{core}", "{comm}"]), min_size=1, max_size=3)),
    }
)
rules = st.fixed_dictionaries(
    {"target": field(target), "trigger": field(st.one_of(syscall_trigger, other_trigger))},
    optional={
        "name": field(st.sampled_from(["web-epipe", "a.b_c"])),
        "description": field(st.just("text")),
        "action": field(action),
        "limits": field(
            optional({"max_cores": field(st.integers(1, 10)), "min_interval": field(st.just("5m"))})
        ),
        "active": field(st.just("01:00-04:00")),
    },
)


def _plain(s: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cf") and c != "\t" for c in s)


def check_result(path: str, rule: Rule | None, errors: list[RuleError]) -> None:
    assert (rule is None) == bool(errors)
    event("accepted" if rule is not None else "refused")
    for e in errors:
        assert type(e) is RuleError
        assert re.match(rf"{re.escape(path)}:\d+:\d+: ", str(e)) and e.line >= 1 and e.col >= 1, str(e)
    if rule is None:
        return
    # Accepted: every value is typed and inside its domain; nothing is code.
    assert NAME_RE.fullmatch(rule.name) and ".." not in rule.name
    t = rule.target
    for s in (t.comm, t.exe, t.unit, t.cgroup, rule.description):
        assert s is None or (isinstance(s, str) and _plain(s)), repr(s)
    assert t.comm is None or glob_problem(t.comm) is None
    assert t.exe is None or t.exe.startswith("/")
    assert t.cgroup is None or (t.cgroup.startswith("/") and ".." not in t.cgroup.split("/"))
    assert t.pid is None or 1 <= t.pid <= 1 << 22
    assert t.uid is None or 0 <= t.uid < 1 << 32
    if isinstance(rule.trigger, SyscallTrigger) and rule.trigger.when is not None:
        code = compile_expr(rule.trigger.when)
        assert len(code) <= MAX_INSNS
        for ins in code:
            assert ins.kind in Insn.__members__.values()
            if ins.kind == Insn.CMP:
                assert ins.field in Field.__members__.values() and ins.op in Op.__members__.values()
                assert -(1 << 63) <= ins.k < 1 << 63
    name = expand(rule.action.core.name, NameFields(1, "../\x1b[2J\n", rule.name, 1, "h", 0.0))
    assert "/" not in name and not name.startswith(".") and re.fullmatch(r"[A-Za-z0-9._+-]+", name)
    if rule.action.run is not None:
        assert rule.action.run[0].startswith("/")


@pytest.mark.slow
@settings(
    max_examples=STRUCTURED_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=rules, unicode=st.booleans())
def test_hostile_values_in_every_field(doc: dict[str, Any], unicode: bool) -> None:
    text = yaml.safe_dump(doc, allow_unicode=unicode)
    (rule, errors), cpu, budget = parse_cpu(lambda: parse_rule(text, "fuzz.yaml"), len(text.encode()))
    assert cpu < budget, f"{cpu:.3f}s of CPU for {len(text)} characters, more than {budget:.3f}s"
    check_result("fuzz.yaml", rule, errors)


GOOD = (
    b"name: good\ntarget: {comm: nginx, uid: 33}\n"
    b"trigger:\n  syscall: [write, writev]\n  when: errno == EPIPE and arg2 > 0\n  count: 5\n  within: 10s\n"
    b"action:\n  core: {content: default-shm, name: 'core.%e.%p', repeat: 2}\n  run: [/bin/true, '{core}']\n"
    b"limits: {max_cores: 3, min_interval: 5m}\n"
)
_NOISE = st.sampled_from(
    [
        b"\x00",
        b"\xff",
        b"\xc3",
        b"\r",
        b"\n",
        b"\t",
        b"&a ",
        b"*a",
        b"!!python/name:os.system ",
        b"{",
        b"[",
        b"'",
        b'"',
        b":",
        b"- ",
        b"#",
        b"%",
        b"\xef\xbb\xbf",
        b"\x1b[2J",
        b"9" * 5000,
        b"    ",
        b"---\n",
        b"<<: ",
    ]
)


@pytest.mark.slow
@settings(max_examples=MUTATION_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(GOOD)), st.integers(0, 8), st.one_of(_NOISE, st.binary(max_size=4))),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_valid_rule(edits: list[tuple[int, int, bytes]]) -> None:
    data = GOOD
    for pos, cut, ins in edits:
        pos = min(pos, len(data))
        data = data[:pos] + ins + data[pos + cut :]
    rule, errors = parse_rule(data, "mut.yaml")
    check_result("mut.yaml", rule, errors)
