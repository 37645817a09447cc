"""The loaded rules kept in step with the rules directory.

:meth:`RuleSet.sync` reads the directory (:mod:`snapd.daemon.ruledir`), refuses what cannot be
loaded, unloads what went away or changed and loads what is new; every other rule keeps running
untouched. Each bad file is logged once per content, not on every change elsewhere.
"""

from __future__ import annotations

import logging
import os

from snapd.daemon import ruledir
from snapd.daemon.journal import StopJournal
from snapd.daemon.limits import RuleState
from snapd.probe import Probes
from snapd.rules import RuleError
from snapd.rules.model import StopMode
from snapd.sys.inotify import In

log = logging.getLogger("snapd")

#: Every way a rule file can appear, change or go away (editors often write-and-rename).
RULE_EVENTS = (
    In.CLOSE_WRITE
    | In.ATTRIB
    | In.MOVED_FROM
    | In.MOVED_TO
    | In.CREATE
    | In.DELETE
    | In.DELETE_SELF
    | In.MOVE_SELF
)


class RuleSet:
    """``states``: the loaded rules by name; ``bad``: path -> its errors, as last logged."""

    def __init__(self, rules_dir: str, probes: Probes, journal: StopJournal) -> None:
        self.rules_dir = rules_dir
        self.probes = probes
        self.journal = journal
        self.states: dict[str, RuleState] = {}
        self.bad: dict[str, tuple[str, ...]] = {}
        self._parsed: dict[ruledir.Key, ruledir.RuleFile] = {}  # ruledir's cache of parsed files

    def sync(self) -> bool:
        """Make the loaded rules match the directory; True if a rule was unloaded (its probe
        may have fired just before: the caller keeps reading events for a moment)."""
        dir_error: tuple[str, ...] = ()
        try:
            files = ruledir.scan(self.rules_dir, cache=self._parsed)
        except RuleError as err:
            # An unusable or untrusted directory: no rule from it stays loaded.
            dir_error = (str(err),)
            if self.bad.get(self.rules_dir) != dir_error:
                log.error("%s", err)
            files = {}
        # Compare with what was logged before this pass, not with self.bad as it is rebuilt: a
        # probe load error (below) is not among the file's own errors, and must be logged once.
        logged = dict(self.bad)
        desired: dict[str, ruledir.RuleFile] = {}
        for path, f in files.items():
            errors = f.errors
            if f.rule is not None and f.rule.name in desired:
                other = desired[f.rule.name].path
                errors = (f"{path}:1:1: rule name '{f.rule.name}' is already used by {other}",)
            elif f.rule is not None and f.rule.target.pid == os.getpid():
                # The probes leave the daemon out of every other selector (targets.scan), but
                # a pid is taken as given: with stop: kernel the probe would SIGSTOP the daemon
                # itself (at its next write) and nothing would ever resume it.
                errors = (
                    f"{path}:1:1: target pid {os.getpid()} is this snapd daemon: it cannot stop or "
                    "snapshot itself",
                )
            elif f.rule is not None:
                desired[f.rule.name] = f
            if errors and logged.get(path) != errors:
                for e in errors:
                    log.error("%s", e)
            if errors:
                self.bad[path] = errors
            else:
                self.bad.pop(path, None)
        for path in list(self.bad):
            if path not in files:
                del self.bad[path]
        if dir_error:
            self.bad[self.rules_dir] = dir_error
        unloaded = False
        for name, st in list(self.states.items()):
            want = desired.get(name)
            if want is None or want.digest != st.digest:
                self.probes.unload(name)
                unloaded = True
                del self.states[name]
                log.info("rule %s unloaded", name)
        for name, f in desired.items():
            if name in self.states or f.rule is None:
                continue
            if f.rule.action.stop == StopMode.KERNEL:
                self.journal.arm(name, f.rule.target)  # before the probe can stop anything
            try:
                self.probes.load(f.rule)
            except RuleError as err:
                if logged.get(f.path) != (str(err),):
                    log.error("%s", err)
                self.bad[f.path] = (str(err),)
                continue
            self.states[name] = RuleState(f.rule, f.digest)
            log.info("rule %s loaded from %s", name, f.path)
        return unloaded

    def unload_all(self) -> None:
        for name in list(self.states):
            self.probes.unload(name)
