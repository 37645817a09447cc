"""The rules directory: which files are rules, whether they may be trusted, what changed.

A rule decides whose memory snapd reads as root, so a rule file must be a regular file (not a
symlink, which could point into a user's home) owned by root and not writable by group or others.
Files that fail are refused with one log line; every other rule keeps running. The same holds
for the directory and every directory above it (as sshd's StrictModes): whoever may rename or
replace an entry on the way may swap root's rules for their own, so then no rule is loaded.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from snapd.rules import RuleError, parse_rule
from snapd.rules.bounds import MAX_FILE_BYTES
from snapd.rules.loader import is_rule_name, rule_names
from snapd.rules.model import Rule


@dataclass(frozen=True)
class RuleFile:
    path: str
    digest: str  # sha256 of the content: a change of content is a new rule (limits reset)
    rule: Rule | None
    errors: tuple[str, ...]
    trusted: bool = True  # False: refused unread (not root's, writable by others, a symlink...)


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


def directory_problem(directory: str) -> str | None:
    """Why ``directory`` (or one above it) cannot be trusted with rules, or None.

    Each must be owned by root and not writable by group or others; a sticky parent (/tmp) is
    fine, since there only an entry's owner may rename or remove it (unlink(2), EPERM)."""
    path = os.path.realpath(directory)
    first = True
    while True:
        try:
            st = os.stat(path)
        except OSError as err:
            return f"{path}: {err.strerror}"
        if st.st_uid != 0:
            return f"{path} is owned by uid {st.st_uid}, not root"
        writable = st.st_mode & 0o022
        if writable and (first or not st.st_mode & stat.S_ISVTX):
            return (
                f"{path} (mode {stat.S_IMODE(st.st_mode):04o}) lets group or others replace rules; chmod go-w"
            )
        if path == "/":
            return None
        path = os.path.dirname(path)
        first = False


#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) -> parsed file: a directory change
#: re-reads only what changed (a hostile file costs its parse once, not on every event)
Key = tuple[int, int, int, int, int]


def read_rule(
    directory: str, name: str, require_root: bool = True, cache: dict[Key, RuleFile] | None = None
) -> RuleFile:
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        why = (
            "a symlink; symlinks are refused: copy the rule into the directory"
            if err.errno == 40
            else err.strerror
        )
        return RuleFile(path, "", None, (f"{path}: refused: {why}",), trusted=False)
    try:
        st = os.fstat(fd)
        problem = (
            trust_problem(st)
            if require_root
            else (None if stat.S_ISREG(st.st_mode) else "not a regular file")
        )
        if problem:
            return RuleFile(path, "", None, (f"{path}: refused: {problem}",), trusted=False)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if cache is not None and key in cache and cache[key].path == path:
            return cache[key]
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    digest = hashlib.sha256(data).hexdigest()
    rule, errors = parse_rule(data, path)
    f = RuleFile(path, digest, rule, tuple(str(e) for e in errors))
    if cache is not None:
        cache[key] = f
    return f


def scan(
    directory: str, require_root: bool = True, cache: dict[Key, RuleFile] | None = None
) -> dict[str, RuleFile]:
    """Every rule-like file in ``directory``, by path; RuleError if the directory is unusable."""
    if require_root and (problem := directory_problem(directory)):
        raise RuleError(directory, 0, 0, f"refusing every rule in it: {problem}")
    try:
        names = rule_names(directory)
    except OSError as err:
        raise RuleError(directory, 0, 0, f"cannot read the rules directory: {err.strerror}") from err
    files = {f.path: f for f in (read_rule(directory, n, require_root, cache) for n in names)}
    if cache is not None:  # forget files that are gone or changed
        keep = {id(f) for f in files.values()}
        for k in [k for k, f in cache.items() if id(f) not in keep]:
            del cache[k]
    return files


def skipped(directory: str) -> list[str]:
    """Names in ``directory`` that are not rule files and not dot files (editors' and tools'
    temporary files): each is worth one log line, since a rule saved as ``x.yml.txt`` or
    ``notes`` would otherwise be silently ignored."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if not n.startswith(".") and not is_rule_name(n))
