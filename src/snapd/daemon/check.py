"""``snapd check FILE...``: validate rule files; as root, also check them against the kernel.

Prints ``FILE: ok`` or each error as ``FILE:LINE:COL: message``. Exit status 0 only when every
file is valid (and, as root, armable); 1 otherwise; 2 for usage errors. A directory argument
checks every ``*.yaml``/``*.yml`` in it. ``--matches`` also lists the running processes each
valid rule would select now. A file named ``snapd.yaml`` (the daemon's configuration file,
snapd.paths.DEFAULT_CONFIG), or one given with ``--config FILE``, is checked as the daemon reads
its configuration, ownership and mode included.

The kernel check compiles nothing: the BPF program is the same whatever a rule says, so a rule
is checked against what arming it takes (snapd.probe.plan): its ``rule_cfg`` row, its syscall
numbers and tracepoints (tracefs), the perf events it needs (opened and closed).

It lives in the wiring layer because it joins two stages (rules, probe).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from snapd.daemon.config import check_config
from snapd.paths import DEFAULT_CONFIG
from snapd.rules.error import RuleError
from snapd.rules.loader import check_file, rule_names
from snapd.rules.model import Rule
from snapd.text import safe

USAGE = """usage: snapd check [--no-load] [--matches] [--config FILE] FILE|DIR...

Validate snapd rule files (see docs/rules.md) and the daemon's configuration file (snapd.yaml,
or any FILE given with --config; see docs/catalog.md). Prints 'FILE: ok' or every error as
'FILE:LINE:COL: message'; exits 0 only if all are valid. As root it also checks that the
running kernel can arm each rule (syscall numbers, tracepoints, perf events), without
compiling anything (--no-load skips that). --matches lists the running processes each valid
rule would select now (pid, comm, exe, unit)."""

CONFIG_NAME = os.path.basename(DEFAULT_CONFIG)


def _expand(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    for a in args:
        if os.path.isdir(a):
            out += [os.path.join(a, n) for n in rule_names(a)]
        else:
            out.append(a)
    return out


def main(argv: list[str]) -> int:
    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    configs: list[str] = []
    while "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            print(f"snapd check: --config needs a FILE\n\n{USAGE}", file=sys.stderr)
            return 2
        configs.append(args[i + 1])
        del args[i : i + 2]
    flags = {a for a in args if a in ("--no-load", "--matches")}
    args = [a for a in args if a not in flags]
    load, matches = "--no-load" not in flags, "--matches" in flags
    configs += [a for a in args if os.path.basename(a) == CONFIG_NAME and not os.path.isdir(a)]
    args = [a for a in args if a not in configs]
    bad = [a for a in args if a.startswith("-") and a != "-"]
    if bad or not (args or configs):
        print(USAGE if not bad else f"snapd check: unknown option {bad[0]}\n\n{USAGE}", file=sys.stderr)
        return 2
    config_bad = False
    for path in configs:
        _, problems = check_config(path)
        config_bad = config_bad or bool(problems)
        for line in problems or [f"{safe(path)}: ok"]:
            print(line)
    if not args:
        return 1 if config_bad else 0
    files = _expand(args)
    if not files:
        print("snapd check: no rule files (*.yaml, *.yml) found", file=sys.stderr)
        return 1
    ok_rules: list[tuple[str, Rule]] = []
    report: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for path in files:
        rule, errors = check_file(path)
        if rule is not None and rule.name in names:
            errors = [RuleError(path, 1, 1, f"rule name '{rule.name}' is already used by {names[rule.name]}")]
        report[path] = [str(e) for e in errors]
        if rule is not None and not errors:
            names[rule.name] = path
            ok_rules.append((path, rule))
    if load and os.geteuid() == 0 and ok_rules:
        for path, err in _check_kernel(ok_rules).items():
            report[path].append(str(err))
    elif load and ok_rules:
        print("snapd check: not root: rules validated but not checked against the kernel", file=sys.stderr)
    for path in files:
        for line in report[path] or [f"{safe(path)}: ok"]:
            print(line)
    if matches:
        _print_matches([(p, r) for p, r in ok_rules if not report[p]])
    return 1 if config_bad or any(report.values()) else 0


def _check_kernel(rules: list[tuple[str, Rule]]) -> dict[str, RuleError]:
    from snapd.probe.plan import check_kernel, plan

    failed: dict[str, RuleError] = {}
    for path, rule in rules:
        try:
            check_kernel(plan(rule))
        except RuleError as err:
            failed[path] = err
    return failed


def _print_matches(rules: list[tuple[str, Rule]]) -> None:
    from snapd.ctl.rulesview import format_matches
    from snapd.probe import targets

    for _path, rule in rules:
        found = [
            targets.describe(pid) for pid in targets.scan(rule.target, targets.target_cgroup(rule.target))
        ]
        print(f"\nrule {safe(rule.name)} selects {len(found)} process(es) now:")
        print(format_matches(found))
