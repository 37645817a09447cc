"""Rule files: a table of good rules, a table of malformed ones (each error asserted with its
line:col), and a property test that no input raises anything but RuleError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapd.content import valid_names
from snapd.rules import (
    MAX_FILE_BYTES,
    CpuTrigger,
    EveryTrigger,
    FdsTrigger,
    RssTrigger,
    RuleError,
    SnapshotMode,
    StopMode,
    SyscallTrigger,
    ThreadsTrigger,
    check_file,
    load_dir,
    load_file,
    parse_rule,
)
from snapd.rules.expr import Cmp, Field, Op
from snapd.rules.syscalls import traced_names

needs_tracefs = pytest.mark.skipif(
    traced_names() is None, reason="tracefs not readable (syscall names unchecked)"
)


def load(text: str, path: str = "r.yaml"):  # type: ignore[no-untyped-def]
    rule, errors = parse_rule(text, path)
    if errors:
        raise errors[0]
    return rule


GOOD = [
    ("target: {comm: nginx}\ntrigger: {syscall: write}", lambda r: r.trigger.syscalls == ("write",)),
    (
        "name: a.b-c_1\ntarget: {pid: 1234}\ntrigger: {syscall: [write, writev], when: 'errno == EPIPE'}",
        lambda r: r.name == "a.b-c_1" and r.trigger.when == Cmp(Field.ERRNO, Op.EQ, 32) and r.trigger.at_exit,
    ),
    (
        "target: {comm: 'ngin*'}\ntrigger: {syscall: read, when: arg2 > 4096 and pid != 1}",
        lambda r: not r.trigger.at_exit and r.target.comm == "ngin*",
    ),
    (
        "target: {exe: /usr/sbin/nginx}\ntrigger: {every: 10s}",
        lambda r: r.trigger == EveryTrigger(10_000_000_000),
    ),
    (
        "target: {unit: nginx.service}\ntrigger: {cpu: {above: 90%, for: 30s}}",
        lambda r: r.trigger == CpuTrigger(90.0, 30_000_000_000),
    ),
    (
        "target: {comm: x}\ntrigger: {every: 10s, then: any}\naction: {stop: kernel}",
        lambda r: r.trigger == EveryTrigger(10_000_000_000, ("any",)) and r.trigger.then_any,
    ),
    (
        "target: {comm: x}\ntrigger: {every: 10s, then: {syscall: [read]}}",
        lambda r: r.trigger.then == ("read",) and not r.trigger.then_any,
    ),
    (
        "target: {cgroup: /system.slice/x.service}\ntrigger: {rss: {above: 2GiB}}",
        lambda r: r.trigger == RssTrigger(2 << 30),
    ),
    ("target: {uid: 33}\ntrigger: {threads: {above: 500}}", lambda r: r.trigger == ThreadsTrigger(500)),
    ("target: {uid: 0, comm: x}\ntrigger: {fds: {above: 10000}}", lambda r: r.trigger == FdsTrigger(10000)),
    (
        "target: {comm: x}\ntrigger: {syscall: write, count: 50, within: 10s}",
        lambda r: r.trigger.count == 50 and r.trigger.within_ns == 10_000_000_000,
    ),
    (
        "target: {comm: x}\ntrigger: {syscall: fsync, when: latency > 500ms}\n"
        "action: {stop: kernel, snapshot: fork}",
        lambda r: (
            r.action.stop is StopMode.KERNEL and r.action.snapshot is SnapshotMode.FORK and r.trigger.at_exit
        ),
    ),
    (
        "target: {comm: x}\ntrigger: {syscall: write}\naction:\n"
        "  core: {content: default-shm, name: 'core.%t.%p', repeat: 2, interval: 5s}\n"
        "  run: [/bin/echo, '{core}', '{rule}']\n"
        "limits: {max_cores: 3, min_interval: 5m}\n"
        "active: '22:00-04:00'",
        lambda r: (
            r.action.core.repeat == 2
            and r.action.run == ("/bin/echo", "{core}", "{rule}")
            and r.limits.max_cores == 3
            and r.active is not None
            and r.active.start_min == 22 * 60
        ),
    ),
    (
        "target: {comm: x}\n"
        "trigger: {syscall: write, when: 'not (ret >= 0 or errno == EAGAIN) and tid == 5'}",
        lambda r: r.trigger.at_exit,
    ),
    ("description: hello\ntarget: {comm: x}\ntrigger: {syscall: getpid}", lambda r: r.description == "hello"),
    # docs/rules.md: `snapshot` defaults to auto, with or without an `action` block
    ("target: {comm: x}\ntrigger: {syscall: getpid}", lambda r: r.action.snapshot is SnapshotMode.AUTO),
    (
        "target: {comm: x}\ntrigger: {syscall: getpid}\naction: {core: {repeat: 3, interval: 2s}}",
        lambda r: r.action.snapshot is SnapshotMode.AUTO and r.action.stop is StopMode.PTRACE,
    ),
]


@needs_tracefs
@pytest.mark.parametrize(("text", "check"), GOOD)
def test_good_rules(text: str, check) -> None:  # type: ignore[no-untyped-def]
    rule = load(text)
    assert rule.name == rule.name and check(rule), rule


T = "target: {comm: x}\n"
S = "trigger: {syscall: write}\n"

# (file text, expected "line:col: message") for the first error
BAD = [
    ("", "1:1: empty rule file; see docs/rules.md for the keys"),
    ("- a\n- b\n", "1:1: rule: expected a mapping (key: value lines), got a list"),
    (
        T + S + "colour: red\n",
        "3:1: rule: unknown key 'colour'; valid keys: name, description, target, trigger, "
        "action, limits, active",
    ),
    (T + S + "targte: {}\n", "3:1: rule: unknown key 'targte'; did you mean 'target'?"),
    (T + T + S, "2:1: rule: duplicate key 'target' (first at line 1)"),
    (S, "1:1: rule: missing required key 'target'"),
    (T, "1:1: rule: missing required key 'trigger'"),
    ("target: {}\n" + S, "1:9: target: give at least one of pid, comm, exe, unit, cgroup, uid"),
    ("target: {pid: abc}\n" + S, "1:15: target.pid: expected an integer, got a string"),
    ("target: {pid: 0}\n" + S, "1:15: target.pid: 0 is out of range (1..4194304)"),
    ("target: {comm: 12}\n" + S, "1:16: target.comm: expected a string, got an integer (quote it)"),
    ("target: {comm: yes}\n" + S, "1:16: target.comm: expected a string, got true/false (quote it)"),
    ("target: {comm: 'ng[ij]nx'}\n" + S, "1:16: target.comm: comm globs support only '*' and '?'"),
    (
        "target: {comm: abcdefghijklmnopq}\n" + S,
        "1:16: target.comm: comm is at most 15 bytes (the kernel truncates longer names)",
    ),
    ("target: {exe: nginx}\n" + S, "1:15: target.exe: must be an absolute path, like /usr/sbin/nginx"),
    (
        "target: {unit: ../x}\n" + S,
        "1:16: target.unit: '../x' is not a systemd unit name (like nginx.service)",
    ),
    (
        "target: {cgroup: /a/../b}\n" + S,
        "1:18: target.cgroup: must be an absolute cgroup path without '..', like /system.slice/nginx.service",
    ),
    (
        T + "trigger: {}\n",
        "2:10: trigger: give exactly one of syscall, every, cpu, rss, threads, fds, function, usdt, signal",
    ),
    (
        T + "trigger: {syscall: write, every: 10s}\n",
        "2:27: trigger: only one of syscall, every, cpu, rss, threads, fds, function, usdt, signal "
        "(got syscall and every)",
    ),
    (T + "trigger: {every: 10}\n", "2:18: trigger.every: 10 needs a unit, e.g. 10s, 500ms or 5m"),
    (
        T + "trigger: {every: 10 sec}\n",
        "2:18: trigger.every: bad duration '10 sec': use a number and a unit "
        "(ns, us, ms, s, m, h, d), e.g. 10s",
    ),
    (
        T + "trigger: {every: 10s, when: errno == 1}\n",
        "2:23: trigger: 'when' applies only to syscall, function and usdt triggers",
    ),
    (
        T + "trigger: {rss: {above: 2Gb}}\n",
        "2:24: trigger.rss.above: bad size '2Gb': use a number and a unit "
        "(B, K, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB, TB), e.g. 2GiB",
    ),
    (T + "trigger: {cpu: {above: 90}}\n", "2:24: trigger.cpu.above: 90 needs a unit, e.g. 90%"),
    (
        T + "trigger: {cpu: {above: 90%, for: 30s, every: 1s}}\n",
        "2:39: trigger.cpu: unknown key 'every'; valid keys: above, for",
    ),
    (T + "trigger: {threads: {}}\n", "2:20: trigger.threads: missing required key 'above'"),
    (T + "trigger: {syscall: []}\n", "2:20: trigger.syscall: the list is empty"),
    (T + "trigger: {syscall: Write}\n", "2:20: trigger.syscall: 'Write' is not a syscall name"),
    (T + "trigger: {syscall: [write, write]}\n", "2:28: trigger.syscall: 'write' is listed twice"),
    (T + "trigger: {syscall: write, count: 1, within: 10s}\n", "2:37: trigger.within needs count: 2 or more"),
    (
        T + "trigger: {syscall: write, count: 500, within: 10s}\n",
        "2:34: trigger.count: at most 128 with 'within' (the kernel keeps that many match times per process)",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: errno == EPIPPE\n",
        "4:18: trigger.when: unknown errno name 'EPIPPE'",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: errno = 1\n",
        "4:15: trigger.when: unexpected character '=' (use 'and', 'or', 'not')",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: 'errno == 1 &&  ret < 0'\n",
        "4:21: trigger.when: unexpected character '&' (use 'and', 'or', 'not')",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: (errno == 1\n",
        "4:9: trigger.when: unbalanced '(': missing ')'",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: 1 == 2\n",
        "4:9: trigger.when: a comparison needs a name "
        "(arg0..arg5, ret, errno, latency, pid, tid, uid) on one side",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: pid == tid\n",
        "4:16: trigger.when: compare a name with a constant, not with another name",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: 0 < ret < 5\n",
        "4:17: trigger.when: comparisons do not chain; join them with 'and'",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: arg1 > 5s\n",
        "4:16: trigger.when: a duration only compares with latency",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: latency > 5parsecs\n",
        "4:19: trigger.when: bad unit 'parsecs' in '5parsecs'; durations take ns, us, ms, s, m, h, d; "
        "sizes take B, K, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB, TB",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: import os\n",
        "4:9: trigger.when: unknown name 'import'; use arg0..arg5 (arg11 for usdt), ret, errno, latency, "
        "pid, tid, uid, numbers, "
        "durations (500ms), sizes (1GiB) or errno names (EPIPE)",
    ),
    (
        T + "trigger:\n  syscall: write\n  when: " + " or ".join(f"arg0 == {i}" for i in range(9)) + "\n",
        "4:9: trigger.when: expression too large for the in-kernel predicate: "
        "it needs 17 steps (comparisons, "
        "and/or/not), at most 16 fit",
    ),
    (T + "trigger: {syscall: write, when: ''}\n", "2:33: trigger.when: must not be empty"),
    (T + S + "action: {stop: maybe}\n", "3:16: action.stop: 'maybe' is not one of ptrace, kernel"),
    (
        T + "trigger: {every: 1s}\naction: {stop: kernel}\n",
        "3:9: action.stop: kernel needs a syscall, function, usdt, signal, cpu or every+then "
        "trigger (the probe that sends SIGSTOP must run in the target)",
    ),
    (
        T + "trigger: {every: 1s, then: anything}\n",
        "2:28: trigger.then: expected {syscall: [NAME, ...]} or any",
    ),
    (
        T + S + "action: {snapshot: thawed}\n",
        "3:20: action.snapshot: 'thawed' is not one of frozen, fork, auto",
    ),
    (
        T + S + "action: {core: {content: heap+bogus}}\n",
        f"3:26: action.core.content: content 'heap+bogus': unknown class 'bogus'; valid: {valid_names()}",
    ),
    (
        T + S + "action: {core: {name: ../../etc/passwd}}\n",
        "3:23: action.core.name: core name must not contain '/' "
        "(cores are stored flat in the core directory)",
    ),
    (T + S + "action: {core: {name: core..x}}\n", "3:23: action.core.name: core name must not contain '..'"),
    (
        T + S + "action: {core: {name: core.%q}}\n",
        "3:23: action.core.name: unknown specifier '%q'; use %t %T %p %e %r %n %h or %%",
    ),
    (
        T + S + "action: {run: /bin/sh -c 'rm -rf /'}\n",
        "3:15: action.run: expected a list (an argv; no shell is used), got a string",
    ),
    (T + S + "action: {run: [page-oncall]}\n", "3:16: action.run: the program must be an absolute path"),
    (
        T + S + "action: {run: [/bin/echo, '{oops}']}\n",
        "3:27: action.run: unknown placeholder '{oops}'; use {core}, {rule}, {pid}, {comm}",
    ),
    (T + S + "limits: {max_cores: -1}\n", "3:21: limits.max_cores: -1 is out of range (1..10000)"),
    (
        T + S + "limits: {min_interval: 0s}\n",
        "3:24: limits.min_interval: bad duration '0s': must be more than zero",
    ),
    (T + S + "active: '25:00-04:00'\n", "3:9: active: '25:00-04:00' is not a valid time range"),
    (T + S + "active: 1am-4am\n", "3:9: active: '1am-4am' must look like \"01:00-04:00\" (local time)"),
    (
        "name: ../../etc\n" + T + S,
        "1:7: name '../../etc' must match [a-z0-9][a-z0-9._-]* "
        "(no '/', no upper case), at most 64 characters",
    ),
    ("name: a..b\n" + T + S, "1:7: name 'a..b' must not contain '..'"),
    ("name: &n x\n" + T + S, "1:7: YAML anchors (&name) are not allowed in rule files"),
    ("a: &a [1]\nb: *a\n", "1:4: YAML anchors (&name) are not allowed in rule files"),
    ("b: *a\n", "1:4: YAML aliases (*name) are not allowed in rule files"),
    (
        "target: !!python/object:os.system {comm: x}\n" + S,
        "1:9: YAML tag 'tag:yaml.org,2002:python/object:os.system' is not allowed in rule files",
    ),
    ("target: {comm: x\n" + S, "2:8: YAML: expected ',' or '}', but got ':' (while parsing a flow mapping)"),
    (
        "target:\n\tcomm: x\n",
        # PyYAML quotes the tab as '\\t'; the one escaper (snapd.text.safe) doubles every backslash
        "2:1: YAML: found character '\\\\t' that cannot start any token (while scanning for the next token)",
    ),
    (
        "---\na: 1\n---\nb: 2\n",
        "3:1: YAML: but found another document (expected a single document in the stream)",
    ),
    (T + S + 'description: "bell\\a"\n', "3:14: description: control characters are not allowed"),
    (
        T + "trigger: {syscall: write, count: 2.5}\n",
        "2:34: trigger.count: expected an integer, got a fractional number",
    ),
]


@needs_tracefs
@pytest.mark.parametrize(("text", "expected"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_rules(text: str, expected: str) -> None:
    rule, errors = parse_rule(text, "bad.yaml")
    assert rule is None
    assert errors, "expected an error"
    assert str(errors[0]) == f"bad.yaml:{expected}"
    assert all(isinstance(e, RuleError) and e.path == "bad.yaml" for e in errors)


def test_at_least_thirty_malformed() -> None:
    assert len(BAD) >= 30


@needs_tracefs
def test_unknown_syscall_suggests() -> None:
    _, errors = parse_rule(T + "trigger: {syscall: wrte}\n", "s.yaml")
    assert str(errors[0]) == (
        "s.yaml:2:20: trigger.syscall: unknown syscall 'wrte' (no tracepoint "
        "syscalls:sys_enter_wrte on this kernel); did you mean 'write'?"
    )


@needs_tracefs
def test_arg_past_arity() -> None:
    _, errors = parse_rule(T + "trigger:\n  syscall: [write, getpid]\n  when: arg0 == 1\n", "a.yaml")
    assert str(errors[0]) == "a.yaml:4:9: trigger.when: arg0 is past the arguments of getpid (it takes 0)"


def test_all_errors_are_reported() -> None:
    _, errors = parse_rule("target: {pid: x, uid: y}\ntrigger: {every: 1}\naction: {stop: no}\n", "m.yaml")
    assert [(e.line, e.col) for e in errors] == [(1, 15), (1, 23), (2, 18), (3, 16)]


def test_non_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin.yaml"
    p.write_bytes(b"target: {comm: x}\ntrigger: {syscall: write}\ndescription: caf\xe9\n")
    _, errors = check_file(p)
    assert str(errors[0]) == f"{p}:3:17: not UTF-8 (byte 0xe9); rule files are UTF-8 text"


def test_file_size_cap(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_bytes(b"# " + b"x" * MAX_FILE_BYTES + b"\n")
    _, errors = check_file(p)
    assert str(errors[0]) == f"{p}:1:1: file is larger than {MAX_FILE_BYTES} bytes; a rule file is small"


def test_billion_laughs_refused() -> None:
    lol = "a: &a [lol, lol]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    _, errors = parse_rule(lol, "lol.yaml")
    assert str(errors[0]) == "lol.yaml:1:4: YAML anchors (&name) are not allowed in rule files"


def test_name_defaults_to_stem_and_must_be_valid(tmp_path: Path) -> None:
    good = tmp_path / "web-epipe.yaml"
    good.write_text(T + "trigger: {every: 1s}\n")
    assert load_file(good).name == "web-epipe"
    bad = tmp_path / "Web Epipe.yaml"
    bad.write_text(T + "trigger: {every: 1s}\n")
    with pytest.raises(RuleError, match=r":1:1: file name 'Web Epipe' is not a valid rule name"):
        load_file(bad)


def test_load_dir(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(T + "trigger: {every: 1s}\n")
    (tmp_path / "b.yml").write_text("name: a\n" + T + "trigger: {every: 1s}\n")
    (tmp_path / "c.yaml").write_text("target: {}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    rules, errors = load_dir(tmp_path)
    assert [r.name for r in rules] == ["a"]
    msgs = [str(e) for e in errors]
    assert f"{tmp_path}/b.yml:1:1: rule name 'a' is already used by {tmp_path}/a.yaml" in msgs
    assert any(m.startswith(f"{tmp_path}/c.yaml:1:9: target: give at least one") for m in msgs)
    _, errs = load_dir(tmp_path / "missing")
    assert str(errs[0]) == f"{tmp_path}/missing:1:1: cannot read rule directory: No such file or directory"


def test_example_rules_are_valid() -> None:
    rules, errors = load_dir(Path(__file__).parents[2] / "rules")
    assert not errors, [str(e) for e in errors]
    assert len(rules) >= 4
    for r in rules:
        # inert: examples select processes that do not exist on a test host
        assert r.target.pid is None


def test_active_window_crosses_midnight() -> None:
    import datetime as dt

    r = load(T + "trigger: {every: 1s}\nactive: '22:00-02:00'\n")
    assert r.is_active(dt.datetime(2026, 1, 1, 23, 30))
    assert r.is_active(dt.datetime(2026, 1, 1, 1, 59))
    assert not r.is_active(dt.datetime(2026, 1, 1, 2, 0))


_yaml_scalars = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.sampled_from(["write", "10s", "2GiB", "90%", "errno == EPIPE", "latency > 1ms", "*x", "&a", "../x"]),
)
_keys = st.sampled_from(
    [
        "name",
        "target",
        "trigger",
        "action",
        "limits",
        "active",
        "comm",
        "pid",
        "syscall",
        "when",
        "count",
        "within",
        "every",
        "cpu",
        "above",
        "for",
        "core",
        "content",
        "run",
        "stop",
        "x",
    ]
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _yaml_values, max_size=7))
def test_random_yaml_only_raises_rule_error(doc: dict[str, object]) -> None:
    import yaml

    text = yaml.safe_dump(doc)
    rule, errors = parse_rule(text, "h.yaml")
    assert (rule is None) == bool(errors)
    assert all(isinstance(e, RuleError) and str(e).startswith("h.yaml:") for e in errors)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_random_bytes_only_raise_rule_error(data: bytes | str) -> None:
    rule, errors = parse_rule(data, "h.yaml")
    assert (rule is None) == bool(errors)
    for e in errors:
        assert isinstance(e, RuleError)
        assert e.line >= 1 and e.col >= 1


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("()<>=!-0123456789 andortEPIPEargretlatency1ms")), max_size=60))
def test_random_when_only_raises_rule_error(when: str) -> None:
    rule, errors = parse_rule(T + f"trigger:\n  syscall: write\n  when: {when!r}\n", "w.yaml")
    assert (rule is None) == bool(errors)
    assert all(isinstance(e, RuleError) for e in errors)


def test_no_eval_anywhere() -> None:
    src = Path(__file__).parents[2] / "src" / "snapd" / "rules"
    for p in src.glob("*.py"):
        text = p.read_text()
        assert "eval(" not in text and "exec(" not in text, p


def test_unprivileged_fallback_keeps_names_syntactic(monkeypatch: pytest.MonkeyPatch) -> None:
    from snapd.rules import syscalls

    monkeypatch.setattr(syscalls, "traced_names", lambda: None)
    monkeypatch.setattr(syscalls, "args", lambda name: None)
    # without tracefs, the kernel's syscall table (and the C headers) name the calls ...
    with pytest.raises(RuleError, match="unknown syscall 'not_checked_here'"):
        load(T + "trigger: {syscall: not_checked_here}\n")
    assert load(T + "trigger: {syscall: getppid, when: arg5 == 1}\n").trigger.syscalls == ("getppid",)
    assert load(T + "trigger: {syscall: sendfile64}\n").trigger.syscalls == ("sendfile",)
    # ... and without any of them, only the spelling
    monkeypatch.setattr(syscalls, "known_names", lambda: None)
    assert load(T + "trigger: {syscall: not_checked_here}\n").trigger == SyscallTrigger(("not_checked_here",))
