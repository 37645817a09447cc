"""No code or C injection through rule values: every hostile string the loader accepts (the
corpus's inject-* files) reaches the kernel only as map data. The BPF programs are built from
the fixed probe.bpf.c with fixed -D flags, so they are instruction-for-instruction identical
(the kernel's prog_tag, a hash of the instructions with map fds zeroed: kernel/bpf/core.c
bpf_prog_calc_tag) whatever the rules; and a comm pattern full of C and shell syntax selects a
process of exactly that name, as data."""

from __future__ import annotations

import ctypes as ct
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapd import procfs
from snapd.probe import layout
from snapd.probe.probes import SOURCE, Probes
from snapd.probe.targets import NO_CGROUP, compile_glob, fnv1a
from snapd.rules import Rule, parse_rule
from support.hostile import Hostile
from support.victims import SESSION_TAG
from support.waiting import wait_for

pytestmark = pytest.mark.kernel

# C string end, statement end, comment, preprocessor, and the session's tag (a comm rule here
# must not match another test run's victim): 14 bytes
HOSTILE_COMM = '");/*x*/#d' + SESSION_TAG


def accepted_inject_rules(corpus: Path) -> list[Rule]:
    out = []
    for p in sorted(corpus.glob("inject-*.yaml")):
        rule, _ = parse_rule(p.read_bytes(), str(p))
        if rule is not None:
            out.append(rule)
    return out


def probe_rules() -> list[Rule]:
    """Function, usdt, signal and string rules with `when` of every shape: map rows, never C."""
    texts = [
        "trigger:\n  function: {binary: libc.so.6, symbol: malloc}\n  when: arg0 > 1GiB and not pid == 1\n",
        "trigger:\n  function: {binary: libc.so.6, symbol: free, at: return}\n  when: latency > 1ms\n",
        "trigger:\n  usdt: {binary: /usr/bin/python3.11, probe: python:function__entry}\n  when: arg2 == 7\n",
        "trigger:\n  syscall: openat\n  when: 'path ~ \"/*\\\\x22);system(*\" and errno == ENOENT'\n",
        "trigger:\n  signal: [SIGTERM, SIGUSR1, SIGRTMAX]\naction: {stop: kernel}\n",
        "trigger:\n  every: 1s\n  then: {syscall: [read, write]}\naction: {stop: kernel}\n",
        "trigger:\n  syscall: [write, sendto]\n"
        '  when: \'data contains "*/#include" or not data contains "%s"\'\n',
    ]
    out = []
    for i, t in enumerate(texts):
        rule, errs = parse_rule(f"name: probe-{i}\ntarget: {{comm: x}}\n{t}".encode(), f"probe-{i}.yaml")
        assert rule is not None, errs
        out.append(rule)
    return out


def prog_tags() -> list[str]:
    """The tags of every BPF program this process holds (fdinfo of its prog fds)."""
    tags = []
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            info = procfs.parse_status(procfs.read_bytes(f"/proc/self/fdinfo/{fd}"))
        except OSError:
            continue
        if "prog_tag" in info:
            tags.append(info["prog_tag"])
    return sorted(tags)


@pytest.fixture
def bpf_builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, object]]]:
    """Records the arguments of every bcc.BPF(...) build (the real build still runs)."""
    import bcc

    seen: list[dict[str, object]] = []
    real = bcc.BPF.__init__

    def spy(self: object, *args: object, **kw: object) -> None:
        seen.append({"args": args, **kw})
        real(self, *args, **kw)

    monkeypatch.setattr(bcc.BPF, "__init__", spy)
    yield seen


def check_row(p: Probes, rule: Rule) -> None:
    """The rule's values are in its row of the `rules` map, as numbers and bit masks."""
    ent = p._loaded[rule.name]
    row = p._bpf[b"rules"][ct.c_int(ent.slot)]
    t = rule.target
    flags = layout.RuleFlag(row.flags)
    if t.comm is not None:
        g = compile_glob(t.comm)
        assert layout.RuleFlag.COMM in flags
        assert (row.glob_len, row.glob_star) == (g.length, g.star)
        assert list(row.glob_chars) == list(g.chars)
    if t.exe is not None:
        assert layout.RuleFlag.EXE in flags
        assert row.exe_hash[0] == fnv1a(t.exe.encode())
    if t.cgroup is not None:
        assert layout.RuleFlag.CGROUP in flags
        assert row.cg_id == NO_CGROUP or row.cg_id > 0


def test_hostile_rules_compile_identically_and_are_stored_as_data(
    bpf_builds: list[dict[str, object]], rule_corpus: Path
) -> None:
    rules = accepted_inject_rules(rule_corpus)
    kinds = {Path(r.path).name.rsplit("-", 1)[0] for r in rules}
    assert (
        len(rules) >= 50
        and {"inject-comm", "inject-comm-glob", "inject-exe-abs", "inject-cgroup-abs"} <= kinds
    )
    src_before = hashlib.sha256(SOURCE.read_bytes()).hexdigest()

    benign, errs = parse_rule("target: {comm: x}\ntrigger: {syscall: write}\n", "benign.yaml")
    assert benign is not None, errs
    with Probes() as p:
        p.load(benign)
        reference = prog_tags()
    assert len(reference) >= 3

    first, errs = parse_rule(f"target: {{comm: '{HOSTILE_COMM}*'}}\ntrigger: {{syscall: write}}\n", "h.yaml")
    assert first is not None, errs
    with Probes() as p:
        p.load(first)  # the program set is compiled at the first load: with this rule in hand
        assert prog_tags() == reference
        check_row(p, first)
        for rule in rules:
            p.load(rule)
            check_row(p, rule)
            p.unload(rule.name)
        assert prog_tags() == reference
        for rule in probe_rules():  # function and usdt rules are rows and attachments too
            p.load(rule)
            p.unload(rule.name)
        assert prog_tags() == reference

    assert hashlib.sha256(SOURCE.read_bytes()).hexdigest() == src_before
    assert len(bpf_builds) == 2
    for build in bpf_builds:
        assert build["src_file"] == str(SOURCE).encode() and "text" not in build
        assert build["cflags"] == layout.cflags(), "the -D flags never depend on a rule"
        flags = [f for f in layout.cflags() if f != layout.include_dir()]
        assert all(re.fullmatch(r"-D[A-Z0-9_]+=-?\d+", f) for f in flags)


def test_hostile_comm_pattern_selects_that_process_as_data(
    hostile: Hostile, compile_victim: Callable[..., Path]
) -> None:
    """A comm pattern made of C syntax is matched byte by byte in the kernel: the process so
    named fires, with its name in the event; a process named differently does not."""
    v = hostile(HOSTILE_COMM)
    other = hostile("plain")
    assert procfs.comm(v.pid) == HOSTILE_COMM
    rule, errs = parse_rule(
        f"name: inj\ntarget: {{comm: '{HOSTILE_COMM}'}}\ntrigger: {{syscall: getppid}}\n", "inj.yaml"
    )
    assert rule is not None, errs
    with Probes() as p:
        p.load(rule)
        other.cmd("g 3")
        v.cmd("g 2")
        events = []

        def two() -> bool:
            events.extend(p.poll(100))
            return len(events) >= 2

        wait_for(two, what="the two firings of the hostile comm")
        assert [(e.pid, e.comm, e.syscall) for e in events] == [(v.pid, HOSTILE_COMM, "getppid")] * 2
