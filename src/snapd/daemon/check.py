"""``snapd check FILE...``: validate rule files; as root, also build and load their probes.

Prints ``FILE: ok`` or each error as ``FILE:LINE:COL: message``. Exit status 0 only when every
file is valid (and, as root, loads); 1 otherwise; 2 for usage errors. A directory argument checks
every ``*.yaml``/``*.yml`` in it. A file named ``snapd.yaml`` (the daemon's configuration file,
snapd.paths.DEFAULT_CONFIG), or one given with ``--config FILE``, is checked as the daemon reads
its configuration, ownership and mode included.

It lives in the wiring layer because loading a rule's probes joins two stages (rules, probe).
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

USAGE = """usage: snapd check [--no-load] [--config FILE] FILE|DIR...

Validate snapd rule files (see docs/rules.md) and the daemon's configuration file (snapd.yaml,
or any FILE given with --config; see docs/catalog.md). Prints 'FILE: ok' or every error as
'FILE:LINE:COL: message'; exits 0 only if all are valid. As root it also compiles and loads
each rule's BPF probes, then unloads them (--no-load skips that)."""

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
    load = True
    if "--no-load" in args:
        args.remove("--no-load")
        load = False
    configs: list[str] = []
    while "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            print(f"snapd check: --config needs a FILE\n\n{USAGE}", file=sys.stderr)
            return 2
        configs.append(args[i + 1])
        del args[i : i + 2]
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
        for path, err in _load_all(ok_rules).items():
            report[path].append(str(err))
    elif load and ok_rules:
        print("snapd check: not root: rules validated but their probes were not loaded", file=sys.stderr)
    for path in files:
        for line in report[path] or [f"{safe(path)}: ok"]:
            print(line)
    return 1 if config_bad or any(report.values()) else 0


def _load_all(rules: list[tuple[str, Rule]]) -> dict[str, RuleError]:
    from snapd.probe import Probes  # only as root: this builds BPF

    failed: dict[str, RuleError] = {}
    probes = Probes()
    try:
        for path, rule in rules:
            try:
                probes.load(rule)
            except RuleError as err:
                failed[path] = err
            else:
                probes.unload(rule.name)
    finally:
        probes.close()
    return failed
