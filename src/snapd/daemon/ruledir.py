"""The rules directory: which files are rules, whether they may be trusted, what changed.

A rule decides whose memory snapd reads as root, so a rule file must be a regular file (not a
symlink, which could point into a user's home) owned by root and not writable by group or others.
Files that fail are refused with one log line; every other rule keeps running.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from snapd.rules import RuleError, parse_rule
from snapd.rules.loader import MAX_FILE_BYTES
from snapd.rules.model import Rule

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class RuleFile:
    path: str
    digest: str  # sha256 of the content: a change of content is a new rule (limits reset)
    rule: Rule | None
    errors: tuple[str, ...]


def is_rule_name(name: str) -> bool:
    return name.endswith(SUFFIXES) and not name.startswith(".")


def trust_problem(st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (symlinks are refused: copy the rule into the directory)"
    if st.st_uid != 0:
        return (
            f"owned by uid {st.st_uid}, not root: anyone who can write a rule can read any process's memory"
        )
    if st.st_mode & 0o022:
        return f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others write it; chmod go-w"
    return None


def read_rule(directory: str, name: str, require_root: bool = True) -> RuleFile:
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        why = (
            "a symlink; symlinks are refused: copy the rule into the directory"
            if err.errno == 40
            else err.strerror
        )
        return RuleFile(path, "", None, (f"{path}: refused: {why}",))
    try:
        st = os.fstat(fd)
        problem = (
            trust_problem(st)
            if require_root
            else (None if stat.S_ISREG(st.st_mode) else "not a regular file")
        )
        if problem:
            return RuleFile(path, "", None, (f"{path}: refused: {problem}",))
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    digest = hashlib.sha256(data).hexdigest()
    rule, errors = parse_rule(data, path)
    return RuleFile(path, digest, rule, tuple(str(e) for e in errors))


def scan(directory: str, require_root: bool = True) -> dict[str, RuleFile]:
    """Every rule-like file in ``directory``, by path."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as err:
        raise RuleError(directory, 0, 0, f"cannot read the rules directory: {err.strerror}") from err
    return {f.path: f for f in (read_rule(directory, n, require_root) for n in names if is_rule_name(n))}
