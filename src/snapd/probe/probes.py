"""Probes: loads rules into the one shared BPF program set and turns firings into Events.

Only the probe package imports bcc. probe.bpf.c is compiled and verified once (:meth:`Probes.compile`;
the daemon does it at start, before it says it is ready); a rule is then only map data, armed in
milliseconds: a row in the ``rules`` map (its slot), one bit in the masks of the syscalls/timers
it uses and one bit in ``targets`` for each process it selects. Tracepoints and perf events are
attached when the first rule needs them and detached when the last one goes. Replacing a rule
arms the new version before the old one goes: one that cannot be armed leaves the old running.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapd import kernel, procfs
from snapd.errors import SnapdError
from snapd.probe import (
    build,
    layout,
    mutes,
    perfevents,
    pinned,
    samplers,
    strrows,
    sysmasks,
    targetmap,
    targets,
    ticks,
    uattach,
)
from snapd.probe.decode import RawEvent, join_stack, tick_event, to_event, user_stack
from snapd.probe.event import Event
from snapd.probe.plan import Plan, plan, resolve_error, rule_cfg, rule_error
from snapd.rules import syscalls as _sys
from snapd.rules.error import RuleError
from snapd.rules.model import Rule

log = logging.getLogger("snapd")

SOURCE = Path(__file__).with_name("probe.bpf.c")
RESCAN_INTERVAL_S = 2.0
SIGNAL_TP = "signal:signal_deliver"
SIGNAL_SENT_TP = "signal:signal_generate"  # who sent it (signal.bpf.c struct sig_sender)
MAX_BATCH = 1024  # events handed out per poll(): bounds memory and latency under a storm


class ProbeError(SnapdError):
    """The shared BPF program set cannot be built, verified or attached on this system."""


@dataclass
class _Loaded:
    plan: Plan
    slot: int
    gen: int
    tracepoints: list[str] = field(default_factory=list)
    syscall_nrs: list[int] = field(default_factory=list)
    cgroup: str | None = None
    crossing: samplers.Crossing = field(default_factory=samplers.Crossing)
    sampled: bool = False  # the /proc samplers have looked at its targets once
    muted_base: int = 0  # the slot's muted count when this rule took it

    @property
    def rule(self) -> Rule:
        return self.plan.rule


def _release(pid: int) -> None:
    """SIGCONT a process a probe stopped with SIGSTOP but that no one will dump."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


class Probes:
    """The probe layer: ``compile`` once, then ``load``/``unload`` rules, ``poll`` (or
    ``fileno`` + ``service``) for their firings.

    ``sample_interval_s`` is the /proc sampling period of rss/threads/fds rules; ``pin_dir`` the
    bpffs directory where the ``stopped`` map is pinned (:mod:`snapd.probe.pinned`), or None.
    """

    def __init__(self, sample_interval_s: float = 1.0, pin_dir: str | None = None) -> None:
        self._bpf: Any = None
        self._uprobes: uattach.UAttach | None = None  # function/usdt attachments, once compiled
        self._problems: list[str] = []  # why a target could not be probed (take_problems)
        self._loaded: dict[str, _Loaded] = {}
        self._slots: dict[int, _Loaded] = {}
        self._gen = 0
        self._tp_refs: Counter[str] = Counter()
        self._ticks = ticks.Ticks()
        self._cpu_attached = False
        self._pending: list[Event] = []
        self._stats: Counter[str] = Counter()
        self._sample_interval = sample_interval_s
        self._next_sample = 0.0
        self._next_rescan = 0.0
        self._names_by_nr = _sys.names_by_number()
        self._closed = False
        self._own: tuple[int, ...] = ()  # set_own: the daemon and its dumper
        self.pin_dir = pin_dir
        self.pinned: str | None = None  # the pinned path, once pinned
        self.pin_error = ""  # why the stopped map could not be pinned, if it could not
        self.compile_error: ProbeError | None = None
        self.strings_error = self.ustrings_error = ""  # why strings cannot be armed (syscall; uprobe)

    # ---- BPF set-up ---------------------------------------------------------------------------

    @property
    def compiled(self) -> bool:
        return self._bpf is not None

    def compile(self) -> None:
        """Build, verify and load the shared program set (idempotent; seconds, once).

        Safe to run in a thread other than the one that later loads rules (bcc's compile is a
        C call that releases the GIL), as long as nothing else touches this object meanwhile.
        """
        if self._bpf is not None:
            return
        if self._closed:
            raise ProbeError("the probe set is closed")
        if self.compile_error is not None:
            raise self.compile_error  # it failed once: it would again, after as many seconds
        try:
            self._compile()
        except ProbeError as err:
            self.compile_error = err
            raise

    def _compile(self) -> None:
        try:
            kernel.require(kernel.PROBE_FEATURES, "its probe")
        except kernel.KernelFeatureMissing as err:
            raise ProbeError(str(err)) from err
        try:
            built = build.program(SOURCE, self._on_event)
        except Exception as err:
            raise ProbeError(f"cannot build the BPF program: {err}") from err
        b = built.bpf
        said = "this kernel's verifier refuses snapd's string matcher ({})"
        self.strings_error = said.format(built.strings_error) if built.strings_error else ""
        self.ustrings_error = said.format(built.ustrings_error) if built.ustrings_error else ""
        for why in dict.fromkeys(w for w in (self.strings_error, self.ustrings_error) if w):
            log.warning("probe: %s; rules with string comparisons are refused", why)
        for ours, table in ((layout.RuleCfg, b"rules"), (layout.SysMask, b"sysmasks")):
            if not layout.same_layout(ours, b[table].Leaf):
                b.cleanup()
                raise ProbeError(f"snapd.probe.layout.{ours.__name__} does not match the compiled program")
        self._bpf = b
        self._uprobes = uattach.UAttach(b, built.uprobe.fd, built.uretprobe.fd, multi=built.multi)
        self._write_own()
        if self.pin_dir is not None:
            try:
                self.pinned = pinned.pin(b[b"stopped"].map_fd, self.pin_dir)
            except OSError as err:
                self.pin_error = str(err)

    def _set_global(self, which: layout.Global, value: int) -> None:
        self._bpf[b"globals"][ct.c_int(which)] = ct.c_uint64(value)

    def _get_global(self, which: layout.Global) -> int:
        return int(self._bpf[b"globals"][ct.c_int(which)].value)

    def set_own(self, daemon: int, dumper: int | None) -> None:
        """The daemon's and its dumper's tgids: they, what they create, and what a thread they
        trace creates (a fork snapshot's child) are never targets."""
        self._own = (daemon, dumper) if dumper else (daemon,)
        if self._bpf is not None:
            self._write_own()

    def _write_own(self) -> None:
        own = (*self._own, 0, 0)
        self._set_global(layout.Global.SELF, own[0])
        self._set_global(layout.Global.DUMPER, own[1])

    def is_own(self, pid: int) -> bool:
        """Whether ``pid`` is snapd's (the daemon, the dumper, what they or their tracees
        created), as the kernel's fork probe recorded it."""
        if pid in self._own:
            return True
        if self._bpf is None:
            return False
        return self._bpf[b"mine"].get(ct.c_uint32(pid)) is not None

    # ---- load / unload ------------------------------------------------------------------------

    def load(self, rule: Rule) -> None:
        """Arm ``rule`` (replacing a loaded rule of the same name, which keeps running if the
        new one cannot be armed); RuleError on failure."""
        if self._closed:
            raise rule_error(rule, "the probe set is closed")
        p = plan(rule)
        old = self._loaded.get(rule.name)
        free = [s for s in range(layout.MAX_RULES) if s not in self._slots]
        if not free and old is not None:
            self.unload(rule.name)  # every slot taken: the new version takes the old one's
            old = None
            free = [s for s in range(layout.MAX_RULES) if s not in self._slots]
        if not free:
            raise rule_error(rule, f"too many rules loaded (at most {layout.MAX_RULES})")
        try:
            self.compile()
        except ProbeError as err:
            raise rule_error(rule, str(err)) from err
        sysmasks.check_chains(self._bpf, p, ~(1 << old.slot) if old else ~0)
        self._gen = (self._gen % 0xFFFFFFFE) + 1
        ent = _Loaded(p, free[0], self._gen, cgroup=p.cgroup)
        ent.muted_base = mutes.muted(self._bpf, ent.slot)
        self._slots[ent.slot] = ent
        try:
            self._write_cfg(ent)
            self._attach(ent)
            self._mark_targets(ent, at_load=True)
        except RuleError:
            self._disarm(ent)
            raise
        except Exception as err:
            self._disarm(ent)
            raise rule_error(rule, f"cannot attach: {err}") from err
        if old is not None:
            self._disarm(old)
        self._loaded[rule.name] = ent
        self._stats["rules_loaded"] += 1

    def _write_cfg(self, ent: _Loaded) -> None:
        table = self._bpf[b"rules"]
        # A unit's cgroup may have appeared or moved since the plan was made (rescans).
        row = ent.plan.cfg if ent.cgroup == ent.plan.cgroup else rule_cfg(ent.rule, ent.cgroup)
        leaf = table.Leaf()
        ct.memmove(ct.byref(leaf), ct.byref(row), ct.sizeof(row))
        leaf.gen = ent.gen
        mutes.reset(self._bpf, ent.slot)
        table[ct.c_int(ent.slot)] = leaf
        self._set_global(layout.Global.ACTIVE, 1)
        bit = 1 << ent.slot
        if ent.rule.target.pid is not None:
            self._set_global(layout.Global.PID_RULES, self._get_global(layout.Global.PID_RULES) | bit)

    def _attach(self, ent: _Loaded) -> None:
        p, bit = ent.plan, 1 << ent.slot
        if p.uprobe or p.syscalls:
            refused = self.ustrings_error if p.uprobe else self.strings_error
            if refused and strrows.rows(p)[1]:
                raise ProbeError(f"its string comparisons cannot be armed: {refused}")
            strrows.write(self._bpf, ent.slot, p)  # before its probe sites or syscall masks name it
        if p.syscalls:
            sysmasks.add(self._bpf, bit, p.syscalls)
            ent.syscall_nrs += [use.nr for use in p.syscalls]
            for tp in (tp for use in p.syscalls for tp in use.tracepoints):
                self._tp_ref(tp, +1)
                ent.tracepoints.append(tp)
        if p.any_syscall:
            self._set_global(layout.Global.ANY_RULES, self._get_global(layout.Global.ANY_RULES) | bit)
            self._tp_ref(sysmasks.RAW_TP, +1)
            ent.tracepoints.append(sysmasks.RAW_TP)
        if p.tick_period_ns is not None:
            period = p.tick_period_ns
            if p.syscalls or p.any_syscall:  # every + then: unarmed until the first tick (armed.bpf.c)
                self._bpf[b"armed"][ct.c_int(ent.slot)] = ct.c_uint64(ent.gen << 32)
                self._set_global(layout.Global.ARMED_RULES, self._get_global(layout.Global.ARMED_RULES) | bit)
            try:
                self._ticks.add(self._bpf, period, ent.slot)
            except OSError as err:
                raise rule_error(ent.rule, f"cannot open a cpu-clock perf event: {err.strerror}") from err
        elif p.signals:
            self._bpf[b"sigmasks"][ct.c_int(ent.slot)] = ct.c_uint64(p.signals)
            self._set_global(layout.Global.SIG_RULES, self._get_global(layout.Global.SIG_RULES) | bit)
            for tp in (SIGNAL_TP, SIGNAL_SENT_TP):
                self._tp_ref(tp, +1)
                ent.tracepoints.append(tp)
        elif p.cpu:
            self._set_global(layout.Global.CPU_RULES, self._get_global(layout.Global.CPU_RULES) | bit)
            if not self._cpu_attached:
                perfevents.attach_sampler(self._bpf)
                self._cpu_attached = True

    def _tp_ref(self, tp: str, delta: int) -> None:
        before = self._tp_refs[tp]
        self._tp_refs[tp] = before + delta
        fn = b"snapd_sys_exit" if ":sys_exit_" in tp else b"snapd_sys_enter"
        fn = {
            SIGNAL_TP: b"snapd_signal_deliver",
            SIGNAL_SENT_TP: b"snapd_signal_generate",
            sysmasks.RAW_TP: b"snapd_raw_enter",
        }.get(tp, fn)
        if before == 0 and delta > 0:
            self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn)
        elif before + delta <= 0:
            del self._tp_refs[tp]
            with contextlib.suppress(Exception):  # already gone: nothing to undo
                self._bpf.detach_tracepoint(tp=tp.encode())

    def _candidates(self, ent: _Loaded) -> list[int]:
        """Existing processes matching ``ent``'s target, leaving out snapd's own."""
        return [pid for pid in targets.scan(ent.rule.target, ent.cgroup) if not self.is_own(pid)]

    def _mark_targets(self, ent: _Loaded, at_load: bool = False) -> None:
        targetmap.mark(self._bpf[b"targets"], self._candidates(ent), ent.slot)
        if ent.plan.uprobe:
            bit = 1 << ent.slot
            self._set_global(layout.Global.UPROBE_RULES, self._get_global(layout.Global.UPROBE_RULES) | bit)
            self._uprobe_sync(ent, at_load)

    def _uprobe_sync(self, ent: _Loaded, at_load: bool) -> None:
        """Attach a function/usdt rule in its targets (those the exec/fork probes found too).
        At load, a rule the host cannot resolve, or that no target could take, is refused."""
        up = self._uprobes
        assert up is not None
        if at_load:
            try:
                up.arm(ent.rule, ent.slot, ent.gen)
            except SnapdError as err:
                raise resolve_error(ent.rule, err) from err
        errors = up.sync(ent.slot, self._pids_of(ent.slot))
        if at_load and errors and not up.attached(ent.slot):
            raise resolve_error(ent.rule, errors[0])
        self._problems += [f"rule {ent.rule.name}: not probed in {err}" for err in errors]

    def take_problems(self) -> list[str]:
        """Targets a function/usdt rule could not be attached in since the last call (one line
        each: the daemon logs them)."""
        out, self._problems = self._problems, []
        return out

    def unload(self, name: str) -> None:
        """Detach rule ``name`` (no-op when it is not loaded); other rules are untouched."""
        ent = self._loaded.pop(name, None)
        if ent is not None:
            self._disarm(ent)

    def _disarm(self, ent: _Loaded) -> None:
        """Undo whatever of ``ent`` is armed (also a half-armed one whose load failed)."""
        if self._slots.get(ent.slot) is ent:
            del self._slots[ent.slot]
        if self._bpf is None:
            return
        bit = 1 << ent.slot
        b = self._bpf
        if self._uprobes is not None:
            self._uprobes.disarm(ent.slot)
        b[b"rules"][ct.c_int(ent.slot)] = b[b"rules"].Leaf()
        for g in (
            layout.Global.PID_RULES,
            layout.Global.CPU_RULES,
            layout.Global.SIG_RULES,
            layout.Global.ARMED_RULES,
            layout.Global.ANY_RULES,
            layout.Global.UPROBE_RULES,
        ):
            self._set_global(g, self._get_global(g) & ~bit)
        if not self._slots:
            self._set_global(layout.Global.ACTIVE, 0)
        sysmasks.remove(b, bit, ent.syscall_nrs)
        for tp in ent.tracepoints:
            self._tp_ref(tp, -1)
        strrows.clear(b, ent.slot, ent.plan)
        if ent.plan.signals and not any(e.plan.signals for e in self._slots.values()):
            b[b"sig_senders"].clear()  # unseen sends would name a later delivery's sender
        if ent.plan.tick_period_ns is not None:
            self._ticks.remove(b, ent.plan.tick_period_ns, ent.slot)
        if self._cpu_attached and not any(e.plan.cpu for e in self._slots.values()):
            perfevents.detach_sampler(b)
            self._cpu_attached = False
        targetmap.clear(b[b"targets"], ent.slot)

    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    # ---- mutes: a rule whose events are useless costs nothing --------------------------------

    def mute(self, name: str, until_ns: int | None) -> None:
        """Mute rule ``name`` in the kernel until CLOCK_MONOTONIC ``until_ns``
        (:data:`layout.MUTE_FOREVER`: until unmuted); None unmutes it. Its events are then
        counted (``kernel_muted``) but neither evaluated nor sent."""
        if (ent := self._loaded.get(name)) is not None and self._bpf is not None:
            mutes.mute(self._bpf, ent.slot, until_ns)

    def muted_count(self, name: str) -> int:
        """Events of rule ``name`` the kernel skipped because it was muted."""
        ent = self._loaded.get(name)
        if ent is None or self._bpf is None:
            return 0
        return mutes.muted(self._bpf, ent.slot) - ent.muted_base

    def mute_process(self, name: str, pid: int, until_ns: int) -> None:
        """Mute rule ``name`` for process ``pid`` until CLOCK_MONOTONIC ``until_ns``."""
        if (ent := self._loaded.get(name)) is not None and self._bpf is not None:
            mutes.mute_process(self._bpf, ent.slot, ent.gen, pid, until_ns)

    # ---- stop: kernel bookkeeping (the pinned `stopped` map) ---------------------------------

    def stopped(self) -> dict[int, int]:
        """Processes the probe stopped and nobody has resumed or taken over yet: pid -> when
        (in /proc/PID/stat starttime ticks: the process started no later)."""
        if self._bpf is None:
            return {}
        return {int(k.value): pinned.ticks(int(v.value)) for k, v in self._bpf[b"stopped"].items()}

    def forget_stopped(self, pid: int) -> None:
        """``pid`` was resumed, or is ours now (halted by the dumper)."""
        if self._bpf is None:
            return
        with contextlib.suppress(KeyError):
            del self._bpf[b"stopped"][ct.c_uint32(pid)]

    def targets_of(self, name: str) -> list[int]:
        """The processes the kernel currently targets for rule ``name``."""
        ent = self._loaded.get(name)
        return [] if ent is None or self._bpf is None else self._pids_of(ent.slot)

    def targets(self) -> dict[str, list[int]]:
        """:meth:`targets_of` every rule, in one pass over the map."""
        by = targetmap.by_slot(self._bpf[b"targets"], self.is_own) if self._bpf is not None else {}
        return {name: by.get(ent.slot, []) for name, ent in self._loaded.items()}

    # ---- events -------------------------------------------------------------------------------

    def _on_event(self, _ctx: Any, data: Any, size: int) -> int:
        if self._take(data, size) & layout.EventFlag.UPROBE:
            return 0  # its at-event record comes next: the event must not leave without it
        # A negative return ends this ring_buffer_consume()/poll() right after this record,
        # which is consumed all the same (libbpf ringbuf_process_ring). One poll must hand out
        # at most MAX_BATCH events: a consume reads until the ring is empty, which a producer
        # faster than us (a trigger storm) never lets happen, and the main loop (ctl, the other
        # rules, stop: kernel hand-overs) and the memory held must stay bounded meanwhile.
        return -1 if len(self._pending) >= MAX_BATCH and not self._closed else 0

    def _take(self, data: Any, size: int) -> layout.EventFlag:
        raw = ct.cast(data, ct.POINTER(RawEvent)).contents
        flags = layout.EventFlag(raw.flags)
        if flags & layout.EventFlag.TICK:
            self._on_tick(raw.value, raw.ts)
            return flags
        if flags & layout.EventFlag.NEW_TARGET:
            self._on_new_target(raw.value, raw.pid, forked=raw.ret != 0)
            return flags
        ent = self._slots.get(raw.slot)
        if ent is None or ent.gen != raw.gen:
            self._stats["events_stale"] += 1  # fired just before its rule was unloaded
            if flags & layout.EventFlag.STOPPED:
                _release(raw.pid)  # we stopped it; nobody else will hear of it
                self.forget_stopped(raw.pid)
            return flags
        if flags & layout.EventFlag.AT_EVENT:
            self._pending = join_stack(self._pending, ent.rule.name, raw, user_stack(data, size))
            return flags
        self._pending.append(to_event(raw, ent.rule, self._names_by_nr))
        return flags

    def _on_new_target(self, mask: int, pid: int, *, forked: bool) -> None:
        """``pid`` is a target of the function/usdt rules of ``mask`` since its fork (from a
        target) or its exec: they are attached in it now. At an exec its libraries are not
        mapped yet: what needs one is left to the rescan, not counted as failed."""
        if self._uprobes is None:
            return
        try:  # a new thread of a target is a fork too; its process is attached already
            if int(procfs.status(pid).get("Tgid", "0")) != pid:
                return
        except (SnapdError, ValueError):
            return  # gone already
        for slot, ent in self._slots.items():
            if mask >> slot & 1 and ent.plan.uprobe:
                errors = self._uprobes.add(slot, pid, keep_failure=forked)
                if forked and errors and os.path.exists(f"/proc/{pid}"):  # gone: nothing missed
                    self._problems += [f"rule {ent.rule.name}: not probed in {err}" for err in errors]

    def _pids_of(self, slot: int) -> list[int]:
        return targetmap.pids_of(self._bpf[b"targets"], slot, self.is_own)

    def _on_tick(self, mask: int, ts: int) -> None:
        for slot in range(layout.MAX_RULES):
            if not mask & (1 << slot) or slot not in self._slots:
                continue
            ent = self._slots[slot]
            self._pending += [tick_event(ent.rule, pid, ts) for pid in self._pids_of(slot)]

    def _sample(self) -> None:
        now_ns = time.monotonic_ns()
        for ent in list(self._slots.values()):
            if samplers.is_sampled(ent.rule.trigger):
                pids = self._pids_of(ent.slot)
                self._stats["samples"] += len(pids)
                first = not ent.sampled
                self._pending += samplers.crossings(ent.rule, ent.crossing, pids, now_ns, first=first)
                ent.sampled = True

    def _rescan(self) -> None:
        for ent in list(self._slots.values()):
            t = ent.rule.target
            if t.unit is not None:
                cg = targets.target_cgroup(t)
                if cg != ent.cgroup:
                    ent.cgroup = cg
                    self._write_cfg(ent)
            self._mark_targets(ent)

    def _has_samplers(self) -> bool:
        return any(samplers.is_sampled(e.rule.trigger) for e in self._slots.values())

    def fileno(self) -> int:
        """A descriptor readable when firings wait in the ring buffer (a BPF ring buffer map
        is pollable: kernel/bpf/ringbuf.c ringbuf_map_poll); -1 before :meth:`compile`."""
        return int(self._bpf[b"events"].map_fd) if self._bpf is not None else -1

    def next_wakeup(self) -> float | None:
        """When (time.monotonic()) :meth:`service` must run next for the /proc samplers and
        rescans, or None when no rule needs them."""
        if not self._slots:
            return None
        wake = self._next_rescan
        if self._has_samplers():
            wake = min(wake, self._next_sample)
        return wake

    def service(self) -> list[Event]:
        """Collect what is ready now (ring buffer, due samples and rescans), oldest first."""
        now = time.monotonic()
        if self._slots and now >= self._next_rescan:
            self._rescan()
            self._stats["rescans"] += 1
            self._next_rescan = now + RESCAN_INTERVAL_S
        if self._has_samplers() and now >= self._next_sample:
            self._sample()
            self._next_sample = now + self._sample_interval
        if self._bpf is not None:
            self._bpf.ring_buffer_consume()
        out, self._pending = self._pending, []
        self._stats["events"] += len(out)
        return out

    def poll(self, timeout_ms: int) -> list[Event]:
        """Wait up to ``timeout_ms`` for firings (0: just collect); return them, oldest first."""
        deadline = time.monotonic() + max(0, timeout_ms) / 1000.0
        while True:
            out = self.service()
            now = time.monotonic()
            if out or now >= deadline:
                return out
            wake = min(deadline, self.next_wakeup() or deadline)
            wait_ms = max(1, int((wake - now) * 1000))
            if self._bpf is not None:
                self._bpf.ring_buffer_poll(wait_ms)
            else:
                time.sleep(wait_ms / 1000.0)

    def stats(self) -> dict[str, int]:
        """Counters: events returned, fired/seen/muted in the kernel, dropped (ring buffer full)."""
        out = dict(self._stats)
        out["rules"] = len(self._slots)
        if self._bpf is not None:
            counters = self._bpf[b"counters"]
            for c in layout.Counter:
                if c is layout.Counter.NR:
                    continue
                vals = counters[ct.c_int(c)]
                out[f"kernel_{c.name.lower()}"] = int(sum(v for v in vals))
        out["dropped"] = out.get("kernel_dropped", 0)
        return out

    def close(self, *, keep_pin: bool = False) -> None:
        """Detach everything (idempotent). Targets stopped by a probe (``stop: kernel``) whose
        events were never handed out are resumed: closing must not strand a stopped process.
        The pin is removed unless ``keep_pin``."""
        if self._closed:
            return
        self._closed = True
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.ring_buffer_consume()
        for ev in self._pending:
            if ev.stopped:
                _release(ev.pid)
        self._pending = []
        for name in list(self._loaded):
            with contextlib.suppress(Exception):  # keep tearing down the rest
                self.unload(name)
        if self._uprobes is not None:
            self._uprobes.close()
        if self._bpf is not None:
            self._ticks.close()
            if self.pin_dir is not None and self.pinned and not keep_pin:
                with contextlib.suppress(OSError):
                    pinned.unpin(self.pin_dir)
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
