"""Rule files: listing, reading and parsing them (see docs/rules.md).

``parse_rule`` = :mod:`~snapd.rules.compose` (strict YAML) + :mod:`~snapd.rules.builder` (the
schema, key by key). Nothing here raises anything but :class:`RuleError` for bad input; every
error names ``file:line:col``, and files over :data:`~snapd.rules.bounds.MAX_FILE_BYTES` are
refused before they are parsed.
"""

from __future__ import annotations

import os

from snapd.rules.bounds import MAX_FILE_BYTES
from snapd.rules.builder import RuleBuilder
from snapd.rules.compose import compose, decode
from snapd.rules.error import RuleError
from snapd.rules.model import Rule
from snapd.rules.schema import Ctx

RULE_SUFFIXES = (".yaml", ".yml")

__all__ = [
    "MAX_FILE_BYTES",
    "RULE_SUFFIXES",
    "check_file",
    "is_rule_name",
    "load_dir",
    "load_file",
    "parse_rule",
    "read_rule_bytes",
    "rule_names",
    "rule_stem",
]


def is_rule_name(name: str) -> bool:
    """A rule file: ``*.yaml`` or ``*.yml``, not hidden (editors' temp files are)."""
    return name.endswith(RULE_SUFFIXES) and not name.startswith(".")


def rule_names(directory: str) -> list[str]:
    """The rule files in ``directory``, sorted: the one lister (``snapd check DIR``,
    :func:`load_dir`, the daemon's rules directory). Raises ``OSError`` if it cannot be listed."""
    return sorted(n for n in os.listdir(directory) if is_rule_name(n))


def rule_stem(path: str) -> str:
    """The file name without its rule suffix: a rule's name when the file gives none."""
    stem = os.path.basename(path)
    for suffix in RULE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem


def read_rule_bytes(path: str, ctx: Ctx) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        ctx.err_at(1, 1, "is a directory, not a rule file")
        return None
    except OSError as err:
        ctx.err_at(1, 1, f"cannot read: {err.strerror or err}")
        return None
    if len(data) > MAX_FILE_BYTES:
        ctx.err_at(1, 1, f"file is larger than {MAX_FILE_BYTES} bytes; a rule file is small")
        return None
    return data


def parse_rule(data: bytes | str, path: str) -> tuple[Rule | None, list[RuleError]]:
    """Parse one rule file's contents; return the rule (or None) and every error found."""
    ctx = Ctx(path)
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            ctx.err_at(1, 1, f"file is larger than {MAX_FILE_BYTES} bytes; a rule file is small")
            return None, ctx.errors
        text = decode(path, data, ctx)
    else:
        text = data
    if text is None:
        return None, ctx.errors
    node = compose(text, ctx)
    if node is None:
        return None, ctx.errors
    rule = RuleBuilder(ctx, path, rule_stem(path)).build(node)
    if ctx.errors:
        return None, sorted(ctx.errors, key=lambda e: (e.line, e.col))
    return rule, []


def check_file(path: str | os.PathLike[str]) -> tuple[Rule | None, list[RuleError]]:
    p = os.fspath(path)
    ctx = Ctx(p)
    data = read_rule_bytes(p, ctx)
    if data is None:
        return None, ctx.errors
    return parse_rule(data, p)


def load_file(path: str | os.PathLike[str]) -> Rule:
    """Load one rule file; raise the first :class:`RuleError` when it is not valid."""
    rule, errors = check_file(path)
    if errors:
        raise errors[0]
    assert rule is not None
    return rule


def load_dir(path: str | os.PathLike[str]) -> tuple[list[Rule], list[RuleError]]:
    """Load every ``*.yaml``/``*.yml`` in a directory (sorted). Names must be unique."""
    d = os.fspath(path)
    try:
        names = rule_names(d)
    except OSError as err:
        return [], [RuleError(d, 1, 1, f"cannot read rule directory: {err.strerror or err}")]
    rules: list[Rule] = []
    errors: list[RuleError] = []
    seen: dict[str, str] = {}
    for n in names:
        p = os.path.join(d, n)
        rule, errs = check_file(p)
        errors += errs
        if rule is None:
            continue
        if rule.name in seen:
            errors.append(RuleError(p, 1, 1, f"rule name '{rule.name}' is already used by {seen[rule.name]}"))
            continue
        seen[rule.name] = p
        rules.append(rule)
    return rules, errors
