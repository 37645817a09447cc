"""Where function and usdt rules meet the uprobe programs: sites resolved per target, the
``usites`` rows their cookies name, and the perf-event links, attached and closed.

A rule is armed in two steps. :meth:`UAttach.arm` checks the rule on the host (the binary, its
symbol or USDT probe; snapd check does the same) and takes its usite rows; :meth:`UAttach.sync`
then attaches in each target process (process scope, docs/triggers-design.md section 3: the
breakpoint is written into that process only, so no other pays even the trap, and a USDT
semaphore is set for the targets only, by the kernel's reference counter). ``sync`` runs at
load and at every rescan: new targets are attached, the links of gone ones closed. A rule's
sites in one process are one uprobe_multi link where the kernel has them, else one perf-event
uprobe each (snapd.probe.uprobes).

Closing a uprobe waits for an RCU-tasks grace period (~115 ms measured here), so links are
closed by a background thread and their usite rows reused only once closed; a stale hit in
between finds its row's generation no longer the rule's and is ignored by the program.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import threading
from dataclasses import dataclass, field
from typing import Any

from snapd.errors import SnapdError
from snapd.probe import symbols, uprobes, usdt
from snapd.probe.symbols import ResolveError
from snapd.probe.trigger_layout import MAX_USITES, SiteFlag
from snapd.rules.expr import arg_index
from snapd.rules.model import FunctionTrigger, ProbeTrigger, Rule, UsdtTrigger
from snapd.rules.probespec import fields_read
from snapd.sys import bpflink

#: processes one rule may be attached in (each costs an fd or two and ~10 ms to attach)
MAX_PROCESSES = 1024


def nargs_used(trig: ProbeTrigger) -> int:
    """How many arguments the rule's `when` reads (arg0..argN-1), string comparisons' too."""
    fields = fields_read(trig.when) if trig.when is not None else frozenset()
    used = [n for n in map(arg_index, fields) if n is not None]
    return max(used) + 1 if used else 0


def host_check(trig: ProbeTrigger) -> None:
    """Resolve ``trig`` on the host's files: ResolveError (keyed binary, symbol, probe) if the
    binary, symbol or probe does not exist or cannot be probed."""
    binary = symbols.resolve_binary(trig.binary)
    if isinstance(trig, FunctionTrigger):
        symbols.function_site(binary, trig.symbol, trig.at_return)
        return
    why = usdt.uncompiled(usdt.find(binary, trig.probe), nargs_used(trig))
    if why is not None:
        raise ResolveError("probe", why)


@dataclass
class _Armed:
    rule: Rule
    slot: int
    gen: int
    sites: dict[tuple[object, ...], int] = field(default_factory=dict)  # site key -> usite
    links: dict[int, list[uprobes.Link]] = field(default_factory=dict)  # pid -> its links
    failed: dict[int, ResolveError | SnapdError] = field(default_factory=dict)  # pid -> why

    @property
    def trigger(self) -> ProbeTrigger:
        trig = self.rule.trigger
        assert isinstance(trig, (FunctionTrigger, UsdtTrigger))
        return trig


class UAttach:
    """The attachments of every function/usdt rule of one compiled program set."""

    def __init__(self, bpf: Any, entry_fd: int, return_fd: int, *, multi: bool = False) -> None:
        self._bpf = bpf
        self._entry_fd = entry_fd
        self._return_fd = return_fd
        self.multi = multi  # the programs were loaded for uprobe_multi links (snapd.probe.build)
        self._armed: dict[int, _Armed] = {}  # rule slot -> its attachments
        self._lock = threading.Lock()  # the free list, shared with the closers
        self._free = list(range(MAX_USITES - 1, -1, -1))
        self._closers: list[threading.Thread] = []

    def arm(self, rule: Rule, slot: int, gen: int) -> None:
        """Check ``rule`` on the host (ResolveError) and make it known; ``sync`` attaches."""
        trig = rule.trigger
        assert isinstance(trig, (FunctionTrigger, UsdtTrigger))
        host_check(trig)
        self._armed[slot] = _Armed(rule, slot, gen)

    def attached(self, slot: int) -> list[int]:
        a = self._armed.get(slot)
        return sorted(a.links) if a is not None else []

    def failures(self, slot: int) -> dict[int, ResolveError | SnapdError]:
        a = self._armed.get(slot)
        return dict(a.failed) if a is not None else {}

    def sync(self, slot: int, pids: list[int]) -> list[ResolveError | SnapdError]:
        """Attach rule ``slot`` in each of ``pids`` not yet attached, close the links of
        processes no longer in ``pids``; return the new failures (a target that does not map
        the binary, has no such symbol, ...). A process that failed is not retried."""
        a = self._armed.get(slot)
        if a is None:
            return []
        want = set(pids)
        for pid in [p for p in a.links if p not in want]:
            self._close_later(a.links.pop(pid), [])
        for pid in [p for p in a.failed if p not in want]:
            del a.failed[pid]
        errors: list[ResolveError | SnapdError] = []
        for pid in sorted(want - set(a.links) - set(a.failed)):
            if len(a.links) >= MAX_PROCESSES:
                err = SnapdError(
                    f"pid {pid}: not attached: the rule is attached in {MAX_PROCESSES} processes"
                )
                a.failed[pid] = err
                errors.append(err)
                continue
            try:
                a.links[pid] = self._attach(a, pid)
            except (ResolveError, SnapdError) as err:
                a.failed[pid] = err
                errors.append(err)
        return errors

    def add(self, slot: int, pid: int, *, keep_failure: bool = True) -> list[ResolveError | SnapdError]:
        """Attach rule ``slot`` in the new target ``pid`` (a target's fork, or an exec), as
        :meth:`sync` would at the next rescan; the failure, if any. Without ``keep_failure``
        a failure is not remembered, so the next sync tries again (at an exec the library a
        rule names is not mapped yet)."""
        a = self._armed.get(slot)
        if a is None or pid in a.links or pid in a.failed:
            return []
        if len(a.links) >= MAX_PROCESSES:
            return []  # sync reports it, once
        try:
            a.links[pid] = self._attach(a, pid)
        except (ResolveError, SnapdError) as err:
            if keep_failure:
                a.failed[pid] = err
            return [err]
        return []

    def _attach(self, a: _Armed, pid: int) -> list[uprobes.Link]:
        trig = a.trigger
        binary = symbols.resolve_binary(trig.binary, pid)
        if isinstance(trig, FunctionTrigger):
            site = symbols.function_site(binary, trig.symbol, trig.at_return)
            flags = SiteFlag.SAVE_ENTRY if trig.at_return else SiteFlag(0)
            sites = [bpflink.Site(site.offset, uprobes.cookie(self._site(a, ("function",), flags, ()), pid))]
            progs = [(self._entry_fd, False)] + ([(self._return_fd, True)] if trig.at_return else [])
        else:
            found = usdt.find(binary, trig.probe)
            why = usdt.uncompiled(found, nargs_used(trig))
            if why is not None:
                raise ResolveError("probe", why, pid)
            sites = []
            for s in found:
                idx = self._site(a, (binary.key, s.offset), SiteFlag.USDT, s.args[: usdt.MAX_ARGS])
                sites.append(bpflink.Site(s.offset, uprobes.cookie(idx, pid), s.semaphore_offset))
            progs = [(self._entry_fd, False)]
        # One uprobe_multi link per program for all the sites, else a perf-event uprobe per site.
        groups = [sites] if self.multi else [[site_] for site_ in sites]
        links: list[uprobes.Link] = []
        try:
            for prog_fd, retprobe in progs:
                for group in groups:
                    links.append(self._link(prog_fd, binary.path, group, pid, retprobe))
        except BaseException:
            for link in links:
                link.close()
            raise
        return links

    def _link(
        self, prog_fd: int, path: str, sites: list[bpflink.Site], pid: int, retprobe: bool
    ) -> uprobes.Link:
        """One link for ``sites``: a uprobe_multi link, or (one site) a perf-event uprobe."""
        if self.multi:
            return uprobes.attach_multi(prog_fd, path, sites, pid=pid, retprobe=retprobe)
        (site,) = sites
        return uprobes.attach(
            prog_fd,
            path,
            site.offset,
            pid=pid,
            retprobe=retprobe,
            ref_ctr_offset=site.ref_ctr_offset,
            cookie=site.cookie,
        )

    def _site(
        self, a: _Armed, key: tuple[object, ...], flags: SiteFlag, args: tuple[usdt.ArgSpec, ...]
    ) -> int:
        """The usite row of ``key`` for rule ``a``, written on first use."""
        idx = a.sites.get(key)
        if idx is not None:
            return idx
        with self._lock:
            if not self._free:
                raise SnapdError(f"no free uprobe site (at most {MAX_USITES} over all rules)")
            idx = self._free.pop()
        raw = uprobes.usite_bytes(a.gen, a.slot, int(flags), args)
        table = self._bpf[b"usites"]
        leaf = table.Leaf()
        ct.memmove(ct.addressof(leaf), raw, len(raw))
        table[ct.c_int(idx)] = leaf
        a.sites[key] = idx
        return idx

    def disarm(self, slot: int) -> None:
        """Forget rule ``slot``: its rows are zeroed now (the program ignores their hits), its
        links closed in the background, its rows reused once they are."""
        a = self._armed.pop(slot, None)
        if a is None:
            return
        table = self._bpf[b"usites"]
        for idx in a.sites.values():
            table[ct.c_int(idx)] = table.Leaf()
        links = [link for ls in a.links.values() for link in ls]
        self._close_later(links, list(a.sites.values()))

    def _close_later(self, links: list[uprobes.Link], rows: list[int]) -> None:
        def run() -> None:
            for link in links:
                link.close()
            with self._lock:
                self._free.extend(rows)

        if not links:
            run()
            return
        t = threading.Thread(target=run, name="snapd-uprobe-close", daemon=True)
        t.start()
        self._closers = [c for c in self._closers if c.is_alive()] + [t]

    def close(self) -> None:
        """Disarm every rule and wait for the links to be closed."""
        for slot in list(self._armed):
            with contextlib.suppress(Exception):
                self.disarm(slot)
        for t in self._closers:
            t.join()
        self._closers = []


__all__ = ["MAX_PROCESSES", "UAttach", "host_check", "nargs_used"]
