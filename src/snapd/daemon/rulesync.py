"""The loaded rules kept in step with the rules directory.

:meth:`RuleSet.sync` reads the directory (:mod:`snapd.daemon.ruledir`), refuses what cannot be
loaded, unloads what went away and arms what is new or changed; every other rule keeps running
untouched. "rule X loaded" is logged once X is armed in the kernel. A rule file edited into
something that cannot be loaded (a typo, a syscall this kernel lacks) keeps its last good
version running, reported as such, as nginx keeps its configuration on a bad reload; a file
that can no longer be trusted (writable by others, not root's) is unloaded. Each bad file is
logged once per content, each skipped name once.
"""

from __future__ import annotations

import logging
import os
import time

from snapd import procfs
from snapd.daemon import ruledir
from snapd.daemon.limits import RuleState
from snapd.probe import Probes
from snapd.rules import RuleError
from snapd.rules.loader import rule_names
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
    """``states``: the armed rules by name; ``bad``: path -> its errors, as last logged."""

    def __init__(self, rules_dir: str, probes: Probes) -> None:
        self.rules_dir = rules_dir
        self.probes = probes
        self.states: dict[str, RuleState] = {}
        self.bad: dict[str, tuple[str, ...]] = {}
        self._parsed: dict[ruledir.Key, ruledir.RuleFile] = {}  # ruledir's cache of parsed files
        self._skipped: set[str] = set()
        #: why stop: kernel rules cannot be armed here (no bpffs for the stopped map), if so
        self.stop_kernel_refused = ""

    def _log_skipped(self) -> None:
        now = set(ruledir.skipped(self.rules_dir))
        for name in sorted(now - self._skipped):
            log.info(
                "%s: ignored: not a rule file (rule files end in .yaml or .yml)",
                os.path.join(self.rules_dir, name),
            )
        self._skipped = now

    def _scan(self) -> tuple[dict[str, ruledir.RuleFile], tuple[str, ...]]:
        try:
            return ruledir.scan(self.rules_dir, cache=self._parsed), ()
        except RuleError as err:
            # An unusable or untrusted directory: no rule from it stays loaded.
            return {}, (str(err),)

    def sync(self) -> bool:
        """Make the loaded rules match the directory; True if a rule was unloaded or replaced
        (its probe may have fired just before: the caller keeps reading events for a moment)."""
        files, dir_error = self._scan()
        if dir_error and self.bad.get(self.rules_dir) != dir_error:
            log.error("%s", dir_error[0])
        if not dir_error:
            self._log_skipped()
        # Compare with what was logged before this pass, not with self.bad as it is rebuilt: a
        # probe load error (below) is not among the file's own errors, and must be logged once.
        logged = dict(self.bad)
        by_path = {st.rule.path: name for name, st in self.states.items()}
        desired: dict[str, ruledir.RuleFile] = {}
        kept: dict[str, str] = {}  # armed rule -> why its file's new content is not loaded
        for path, f in files.items():
            errors = f.errors
            if f.rule is not None and f.rule.name in desired:
                other = desired[f.rule.name].path
                errors = (f"{path}:1:1: rule name '{f.rule.name}' is already used by {other}",)
            elif f.rule is not None and f.rule.target.pid == os.getpid():
                # The probes leave the daemon out of every other selector, but a pid is taken
                # as given: with stop: kernel the probe would SIGSTOP the daemon itself (at its
                # next write) and nothing would ever resume it.
                errors = (
                    f"{path}:1:1: target pid {os.getpid()} is this snapd daemon: it cannot stop or "
                    "snapshot itself",
                )
            elif f.rule is not None and f.rule.action.stop is StopMode.KERNEL and self.stop_kernel_refused:
                errors = (f"{path}:1:1: {self.stop_kernel_refused}",)
            elif f.rule is not None:
                desired[f.rule.name] = f
            if errors and logged.get(path) != errors:
                for e in errors:
                    log.error("%s", e)
            if errors:
                self.bad[path] = errors
                if f.trusted and path in by_path:
                    kept[by_path[path]] = errors[0]
            else:
                self.bad.pop(path, None)
        for path in list(self.bad):
            if path not in files:
                del self.bad[path]
        if dir_error:
            self.bad[self.rules_dir] = dir_error
        unloaded = False
        for name, st in list(self.states.items()):
            if name in kept:
                self._keep(st, kept[name])
                continue
            want = desired.get(name)
            if want is None:
                self.probes.unload(name)
                unloaded = True
                del self.states[name]
                log.info("rule %s unloaded", name)
            elif want.digest == st.digest and st.bad_edit:
                st.bad_edit = ""
                log.info("rule %s: its file is back to the version that is running", name)
        for name, f in desired.items():
            old = self.states.get(name)
            if f.rule is None or (old is not None and old.digest == f.digest):
                continue
            try:
                self.probes.load(f.rule)  # replaces a running version only once armed
            except RuleError as err:
                if logged.get(f.path) != (str(err),):
                    log.error("%s", err)
                self.bad[f.path] = (str(err),)
                if old is not None:
                    self._keep(old, str(err))
                continue
            st = self.states[name] = RuleState(f.rule, f.digest)
            unloaded |= old is not None
            n = len(self.probes.targets_of(name))
            st.targets_log.loaded(n > 0, time.monotonic())
            what = "reloaded" if old is not None else "loaded"
            if n:
                log.info("rule %s %s from %s: armed, %d process(es) targeted now", name, what, f.path, n)
            else:  # as `snapd ctl rules` says it
                log.info("rule %s %s from %s: in the kernel, waiting for target", name, what, f.path)
        return unloaded

    def note_targets(self) -> list[str]:
        """A line for each rule whose targets came or went since the log last said (after a
        rescan: :mod:`snapd.daemon.targetlog`)."""
        now, out, targets = time.monotonic(), [], self.probes.targets()
        for name, st in self.states.items():
            pids = targets.get(name, [])
            line = st.targets_log.observe(name, pids, st.state(len(pids)), now, procfs.comm)
            if line:
                out.append(line)
        return out

    def _keep(self, st: RuleState, why: str) -> None:
        if st.bad_edit != why:
            st.bad_edit = why
            log.warning(
                "rule %s: keeping its last good version running: the edit of %s cannot be loaded",
                st.rule.name,
                st.rule.path,
            )

    def files(self) -> list[str]:
        """The rule files in the directory (for ``ctl rules`` before anything is armed)."""
        try:
            return [os.path.join(self.rules_dir, n) for n in rule_names(self.rules_dir)]
        except OSError:
            return []

    def unload_all(self) -> None:
        for name in list(self.states):
            self.probes.unload(name)
