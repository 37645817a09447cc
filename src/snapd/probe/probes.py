"""Probes: loads rules into the one shared BPF program set and turns firings into Events.

This is the only module that imports bcc. probe.bpf.c is compiled once per :class:`Probes`, on
the first :meth:`Probes.load`; a rule is then a row in the ``rules`` map (its slot), one bit in
the masks of the syscalls/timers it uses and one bit in ``targets`` for each process it selects.
Tracepoints and perf events are attached when the first rule needs them and detached when the
last one goes, so loading or unloading a rule never disturbs the others.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapd import kernel, procfs
from snapd.errors import SnapdError
from snapd.probe import layout, samplers, targets
from snapd.probe.event import Event, Kind
from snapd.rules import syscalls as _sys
from snapd.rules.error import RuleError
from snapd.rules.expr import compile_expr
from snapd.rules.model import (
    CpuTrigger,
    EveryTrigger,
    FdsTrigger,
    RssTrigger,
    Rule,
    StopMode,
    SyscallTrigger,
    ThreadsTrigger,
)

SOURCE = Path(__file__).with_name("probe.bpf.c")
PERF_TYPE_SOFTWARE = 1  # include/uapi/linux/perf_event.h
PERF_COUNT_SW_CPU_CLOCK = 0
RESCAN_INTERVAL_S = 2.0
MAX_BATCH = 1024  # events handed out per poll(): bounds memory and latency under a storm


class _RawEvent(ct.Structure):
    """struct event in probe.bpf.c."""

    _fields_ = [
        ("ts", ct.c_uint64),
        ("args", ct.c_int64 * 6),
        ("ret", ct.c_int64),
        ("value", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("slot", ct.c_uint32),
        ("gen", ct.c_uint32),
        ("nr", ct.c_int32),
        ("flags", ct.c_uint32),
        ("comm", ct.c_char * 16),
    ]


@dataclass
class _Loaded:
    rule: Rule
    slot: int
    gen: int
    tracepoints: list[str] = field(default_factory=list)
    syscall_nrs: list[tuple[int, bool]] = field(default_factory=list)  # (nr, at_exit)
    cgroup: str | None = None
    crossing: samplers.Crossing = field(default_factory=samplers.Crossing)


def _is_process(pid: int) -> bool:
    try:
        return int(procfs.status(pid)["Tgid"]) == pid
    except (SnapdError, KeyError, ValueError):
        return False


def _release(pid: int) -> None:
    """SIGCONT a process a probe stopped with SIGSTOP but that no one will dump."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _rule_error(rule: Rule, msg: str) -> RuleError:
    return RuleError(rule.path or rule.name, 1, 1, f"rule '{rule.name}': {msg}")


class Probes:
    """The probe layer: ``load``/``unload`` rules, ``poll`` for their firings.

    ``sample_interval_s`` is the /proc sampling period of rss/threads/fds rules.
    """

    def __init__(self, sample_interval_s: float = 1.0) -> None:
        self._bpf: Any = None
        self._loaded: dict[str, _Loaded] = {}
        self._slots: dict[int, _Loaded] = {}
        self._gen = 0
        self._tp_refs: Counter[str] = Counter()
        self._tick_fds: dict[int, int] = {}
        self._cpu_attached = False
        self._pending: list[Event] = []
        self._stats: Counter[str] = Counter()
        self._sample_interval = sample_interval_s
        self._next_sample = 0.0
        self._next_rescan = 0.0
        self._names_by_nr = _sys.names_by_number()
        self._closed = False

    # ---- BPF set-up ---------------------------------------------------------------------------

    def _ensure_bpf(self, rule: Rule) -> Any:
        if self._bpf is not None:
            return self._bpf
        try:
            kernel.require(kernel.PROBE_FEATURES, "its probe")
        except kernel.KernelFeatureMissing as err:
            raise _rule_error(rule, str(err)) from err
        try:
            from bcc import BPF  # the only bcc import in snapd

            b = BPF(src_file=str(SOURCE).encode(), cflags=layout.cflags())
            ev = b.load_func(b"snapd_eval", BPF.TRACEPOINT)
            b[b"evalprog"][ct.c_int(0)] = ct.c_int(ev.fd)
            cl = b.load_func(b"snapd_classify", BPF.TRACEPOINT)
            b[b"execprog"][ct.c_int(0)] = ct.c_int(cl.fd)
            b.load_func(b"snapd_sys_enter", BPF.TRACEPOINT)
            b.load_func(b"snapd_sys_exit", BPF.TRACEPOINT)
            b[b"events"].open_ring_buffer(self._on_event)
        except Exception as err:  # bcc reports compile/verifier/permission errors as Exception
            raise _rule_error(rule, f"cannot build the BPF program: {err}") from err
        self._bpf = b
        return b

    def _set_global(self, which: layout.Global, value: int) -> None:
        self._bpf[b"globals"][ct.c_int(which)] = ct.c_uint64(value)

    def _get_global(self, which: layout.Global) -> int:
        return int(self._bpf[b"globals"][ct.c_int(which)].value)

    # ---- load / unload ------------------------------------------------------------------------

    def load(self, rule: Rule) -> None:
        """Attach ``rule`` (replacing a loaded rule of the same name); RuleError on failure."""
        if self._closed:
            raise _rule_error(rule, "the probe set is closed")
        if rule.name in self._loaded:
            self.unload(rule.name)
        if rule.action.stop is StopMode.KERNEL and not isinstance(rule.trigger, (SyscallTrigger, CpuTrigger)):
            raise _rule_error(
                rule, "stop: kernel needs a syscall or cpu trigger (the probe must run in the target)"
            )
        free = [s for s in range(layout.MAX_RULES) if s not in self._slots]
        if not free:
            raise _rule_error(rule, f"too many rules loaded (at most {layout.MAX_RULES})")
        self._ensure_bpf(rule)
        self._gen = (self._gen % 0xFFFFFFFE) + 1
        ent = _Loaded(rule, free[0], self._gen, cgroup=targets.target_cgroup(rule.target))
        self._slots[ent.slot] = ent
        self._loaded[rule.name] = ent
        try:
            self._write_cfg(ent)
            self._attach(ent)
            self._mark_targets(ent)
        except RuleError:
            self.unload(rule.name)
            raise
        except Exception as err:
            self.unload(rule.name)
            raise _rule_error(rule, f"cannot attach: {err}") from err
        self._stats["rules_loaded"] += 1

    def _write_cfg(self, ent: _Loaded) -> None:
        rule, t = ent.rule, ent.rule.target
        table = self._bpf[b"rules"]
        leaf = table.Leaf()
        leaf.gen = ent.gen
        flags = layout.RuleFlag(0)
        if t.pid is not None:
            flags |= layout.RuleFlag.PID
            leaf.pid = t.pid
        if t.uid is not None:
            flags |= layout.RuleFlag.UID
            leaf.uid = t.uid
        if t.exe is not None:
            flags |= layout.RuleFlag.EXE
            h1, h2 = targets.exe_hashes(t.exe)
            leaf.exe_hash[0] = h1
            leaf.exe_hash[1] = h2
        if t.unit is not None or t.cgroup is not None:
            flags |= layout.RuleFlag.CGROUP
            leaf.cg_level, leaf.cg_id = targets.cgroup_id(ent.cgroup)
        if t.comm is not None:
            flags |= layout.RuleFlag.COMM
            g = targets.compile_glob(t.comm)
            leaf.glob_len, leaf.glob_star = g.length, g.star
            for i, m in enumerate(g.chars):
                leaf.glob_chars[i] = m
        if rule.action.stop is StopMode.KERNEL:
            flags |= layout.RuleFlag.STOP_KERNEL
        trig = rule.trigger
        if isinstance(trig, SyscallTrigger):
            leaf.count = trig.count
            leaf.within_ns = trig.within_ns or 0
            if trig.when is not None:
                code = compile_expr(trig.when)
                leaf.n_insns = len(code)
                for i, ins in enumerate(code):
                    leaf.insns[i].kind = ins.kind
                    leaf.insns[i].field = ins.field
                    leaf.insns[i].op = ins.op
                    leaf.insns[i].k = ins.k
        elif isinstance(trig, CpuTrigger):
            flags |= layout.RuleFlag.CPU
            leaf.cpu_bucket_ns = max(1, trig.for_ns // layout.CPU_BUCKETS)
            samples = trig.above_pct / 100.0 * trig.for_ns / layout.CPU_SAMPLE_PERIOD_NS
            leaf.cpu_threshold = max(1, round(samples))
        leaf.flags = int(flags)
        table[ct.c_int(ent.slot)] = leaf
        self._set_global(layout.Global.ACTIVE, 1)
        if t.pid is not None:
            self._set_global(
                layout.Global.PID_RULES, self._get_global(layout.Global.PID_RULES) | (1 << ent.slot)
            )

    def _attach(self, ent: _Loaded) -> None:
        trig, bit = ent.rule.trigger, 1 << ent.slot
        if isinstance(trig, SyscallTrigger):
            nrs = _sys.numbers()
            for name in trig.syscalls:
                if name not in nrs:
                    raise _rule_error(
                        ent.rule, f"no syscall number known for '{name}' on this system (asm/unistd headers)"
                    )
            masks = self._bpf[b"sysmasks"]
            for name in trig.syscalls:
                nr = nrs[name]
                key = ct.c_uint32(nr)
                cur = masks.get(key)
                enter, exit_ = (cur.enter, cur.exit) if cur is not None else (0, 0)
                if bin(enter | exit_).count("1") >= layout.MAX_CHAIN:
                    raise _rule_error(ent.rule, f"more than {layout.MAX_CHAIN} rules on syscall '{name}'")
                leaf = masks.Leaf()
                leaf.enter, leaf.exit = (enter, exit_ | bit) if trig.at_exit else (enter | bit, exit_)
                masks[key] = leaf
                ent.syscall_nrs.append((nr, trig.at_exit))
                tps = [f"syscalls:sys_enter_{name}"] + ([f"syscalls:sys_exit_{name}"] if trig.at_exit else [])
                for tp in tps:
                    self._tp_ref(tp, +1)
                    ent.tracepoints.append(tp)
        elif isinstance(trig, EveryTrigger):
            ticks = self._bpf[b"ticks"]
            pkey = ct.c_uint64(trig.period_ns)
            cur = ticks.get(pkey)
            ticks[pkey] = ct.c_uint64((cur.value if cur is not None else 0) | bit)
            if trig.period_ns not in self._tick_fds:
                from bcc import BPF, lib

                fn = self._bpf.load_func(b"snapd_tick", BPF.PERF_EVENT)
                fd = lib.bpf_attach_perf_event(
                    ct.c_int(fn.fd),
                    ct.c_uint(PERF_TYPE_SOFTWARE),
                    ct.c_uint(PERF_COUNT_SW_CPU_CLOCK),
                    ct.c_ulonglong(trig.period_ns),
                    ct.c_ulonglong(0),
                    ct.c_int(-1),
                    ct.c_int(0),
                    ct.c_int(-1),
                )
                if fd < 0:
                    raise _rule_error(ent.rule, f"cannot open a cpu-clock perf event: {os.strerror(-fd)}")
                self._tick_fds[trig.period_ns] = fd
        elif isinstance(trig, CpuTrigger):
            self._set_global(layout.Global.CPU_RULES, self._get_global(layout.Global.CPU_RULES) | bit)
            if not self._cpu_attached:
                from bcc import BPF

                step = self._bpf.load_func(b"snapd_cpu_step", BPF.PERF_EVENT)
                self._bpf[b"cpuprog"][ct.c_int(0)] = ct.c_int(step.fd)
                self._bpf.attach_perf_event(
                    ev_type=PERF_TYPE_SOFTWARE,
                    ev_config=PERF_COUNT_SW_CPU_CLOCK,
                    fn_name=b"snapd_cpu_sample",
                    sample_period=layout.CPU_SAMPLE_PERIOD_NS,
                )
                self._cpu_attached = True

    def _tp_ref(self, tp: str, delta: int) -> None:
        before = self._tp_refs[tp]
        self._tp_refs[tp] = before + delta
        fn = b"snapd_sys_exit" if ":sys_exit_" in tp else b"snapd_sys_enter"
        if before == 0 and delta > 0:
            self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn)
        elif before + delta <= 0:
            del self._tp_refs[tp]
            with contextlib.suppress(Exception):  # already gone: nothing to undo
                self._bpf.detach_tracepoint(tp=tp.encode())

    def _mark_targets(self, ent: _Loaded) -> None:
        tmap = self._bpf[b"targets"]
        bit = 1 << ent.slot
        for pid in targets.scan(ent.rule.target, ent.cgroup):
            key = ct.c_uint32(pid)
            cur = tmap.get(key)
            old = cur.value if cur is not None else 0
            if not old & bit:
                tmap[key] = ct.c_uint64(old | bit)

    def unload(self, name: str) -> None:
        """Detach rule ``name`` (no-op when it is not loaded); other rules are untouched."""
        ent = self._loaded.pop(name, None)
        if ent is None:
            return
        self._slots.pop(ent.slot, None)
        if self._bpf is None:
            return
        bit = 1 << ent.slot
        b = self._bpf
        zero = b[b"rules"].Leaf()
        b[b"rules"][ct.c_int(ent.slot)] = zero
        for g in (layout.Global.PID_RULES, layout.Global.CPU_RULES):
            self._set_global(g, self._get_global(g) & ~bit)
        if not self._slots:
            self._set_global(layout.Global.ACTIVE, 0)
        masks = b[b"sysmasks"]
        for nr, _ in ent.syscall_nrs:
            key = ct.c_uint32(nr)
            cur = masks.get(key)
            if cur is None:
                continue
            if (cur.enter | cur.exit) & ~bit:
                leaf = masks.Leaf()
                leaf.enter, leaf.exit = cur.enter & ~bit, cur.exit & ~bit
                masks[key] = leaf
            else:
                del masks[key]
        for tp in ent.tracepoints:
            self._tp_ref(tp, -1)
        trig = ent.rule.trigger
        if isinstance(trig, EveryTrigger):
            ticks = b[b"ticks"]
            pkey = ct.c_uint64(trig.period_ns)
            cur = ticks.get(pkey)
            rest = (cur.value if cur is not None else 0) & ~bit
            if rest:
                ticks[pkey] = ct.c_uint64(rest)
            else:
                if cur is not None:
                    del ticks[pkey]
                fd = self._tick_fds.pop(trig.period_ns, None)
                if fd is not None:
                    from bcc import lib

                    lib.bpf_close_perf_event_fd(ct.c_int(fd))
        if self._cpu_attached and not any(
            isinstance(e.rule.trigger, CpuTrigger) for e in self._slots.values()
        ):
            b.detach_perf_event(ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK)
            self._cpu_attached = False
        tmap = b[b"targets"]
        for k, v in list(tmap.items()):
            if v.value & bit:
                rest = v.value & ~bit
                try:
                    if rest:
                        tmap[k] = ct.c_uint64(rest)
                    else:
                        del tmap[k]
                except KeyError:
                    pass

    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    # ---- events -------------------------------------------------------------------------------

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> int:
        self._take(data)
        # A negative return ends this ring_buffer_consume()/poll() right after this record,
        # which is consumed all the same (libbpf ringbuf_process_ring). Without it, a consume
        # during a trigger storm never returned: it read until the ring was empty, which a
        # producer faster than us never lets happen, and so held the main loop (no ctl, no other
        # rule) and every event of the storm in memory (a 10 s storm: +170 MiB RSS).
        return -1 if len(self._pending) >= MAX_BATCH and not self._closed else 0

    def _take(self, data: Any) -> None:
        raw = ct.cast(data, ct.POINTER(_RawEvent)).contents
        flags = layout.EventFlag(raw.flags)
        if flags & layout.EventFlag.TICK:
            self._on_tick(raw.value, raw.ts)
            return
        ent = self._slots.get(raw.slot)
        if ent is None or ent.gen != raw.gen:
            self._stats["events_stale"] += 1  # fired just before its rule was unloaded
            if flags & layout.EventFlag.STOPPED:
                _release(raw.pid)  # we stopped it; nobody else will hear of it
            return
        comm = raw.comm.decode("utf-8", "replace")
        if flags & layout.EventFlag.CPU:
            trig = ent.rule.trigger
            assert isinstance(trig, CpuTrigger)
            pct = raw.value * layout.CPU_SAMPLE_PERIOD_NS * 100 // trig.for_ns
            self._pending.append(
                Event(
                    ent.rule.name,
                    raw.pid,
                    raw.tid,
                    comm,
                    Kind.CPU.value,
                    None,
                    (),
                    None,
                    int(pct),
                    raw.ts,
                    bool(flags & layout.EventFlag.STOPPED),
                )
            )
            return
        name = self._names_by_nr.get(raw.nr, f"syscall_{raw.nr}")
        n = _sys.arity(name)
        args = tuple(int(a) for a in raw.args[: 6 if n is None else n])
        ret = int(raw.ret) if flags & layout.EventFlag.EXIT else None
        self._pending.append(
            Event(
                ent.rule.name,
                raw.pid,
                raw.tid,
                comm,
                Kind.SYSCALL.value,
                name,
                args,
                ret,
                None,
                raw.ts,
                bool(flags & layout.EventFlag.STOPPED),
            )
        )

    def _pids_of(self, slot: int) -> list[int]:
        bit = 1 << slot
        out = []
        for k, v in self._bpf[b"targets"].items():
            pid = int(k.value)
            # fork also marks new threads (by tid); an Event names a process
            if v.value & bit and _is_process(pid):
                out.append(pid)
        return sorted(out)

    def _on_tick(self, mask: int, ts: int) -> None:
        for slot in range(layout.MAX_RULES):
            if not mask & (1 << slot) or slot not in self._slots:
                continue
            ent = self._slots[slot]
            for pid in self._pids_of(slot):
                self._pending.append(
                    Event(
                        ent.rule.name, pid, pid, procfs.comm(pid), Kind.EVERY.value, None, (), None, None, ts
                    )
                )

    def _sample(self) -> None:
        now_ns = time.monotonic_ns()
        for ent in list(self._slots.values()):
            trig = ent.rule.trigger
            if not isinstance(trig, (RssTrigger, ThreadsTrigger, FdsTrigger)):
                continue
            above = samplers.threshold(trig)
            pids = self._pids_of(ent.slot)
            for pid in pids:
                value = samplers.measure(trig, pid)
                self._stats["samples"] += 1
                if value is not None and ent.crossing.update(pid, value, above):
                    kind = {RssTrigger: Kind.RSS, ThreadsTrigger: Kind.THREADS, FdsTrigger: Kind.FDS}[
                        type(trig)
                    ]
                    self._pending.append(
                        Event(
                            ent.rule.name,
                            pid,
                            pid,
                            procfs.comm(pid),
                            kind.value,
                            None,
                            (),
                            None,
                            value,
                            now_ns,
                        )
                    )
            ent.crossing.forget_except(set(pids))

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
        return any(
            isinstance(e.rule.trigger, (RssTrigger, ThreadsTrigger, FdsTrigger)) for e in self._slots.values()
        )

    def poll(self, timeout_ms: int) -> list[Event]:
        """Wait up to ``timeout_ms`` for firings (0: just collect); return them, oldest first."""
        deadline = time.monotonic() + max(0, timeout_ms) / 1000.0
        while True:
            now = time.monotonic()
            if self._slots and now >= self._next_rescan:
                self._rescan()
                self._next_rescan = now + RESCAN_INTERVAL_S
            if self._has_samplers() and now >= self._next_sample:
                self._sample()
                self._next_sample = now + self._sample_interval
            if self._bpf is not None:
                self._bpf.ring_buffer_consume()
            if self._pending or now >= deadline:
                break
            wake = deadline
            if self._slots:
                wake = min(wake, self._next_rescan)
            if self._has_samplers():
                wake = min(wake, self._next_sample)
            wait_ms = max(1, int((wake - now) * 1000))
            if self._bpf is not None:
                self._bpf.ring_buffer_poll(wait_ms)
            else:
                time.sleep(wait_ms / 1000.0)
        out, self._pending = self._pending, []
        self._stats["events"] += len(out)
        return out

    def stats(self) -> dict[str, int]:
        """Counters: events returned, fired/seen in the kernel, dropped (ring buffer full), ..."""
        out = dict(self._stats)
        out["rules"] = len(self._slots)
        if self._bpf is not None:
            counters = self._bpf[b"counters"]
            for c in (layout.Counter.SEEN, layout.Counter.FIRED, layout.Counter.DROPPED):
                vals = counters[ct.c_int(c)]
                out[f"kernel_{c.name.lower()}"] = int(sum(v for v in vals))
        out["dropped"] = out.get("kernel_dropped", 0)
        return out

    def close(self) -> None:
        """Detach everything (idempotent). Targets stopped by a probe (``stop: kernel``) whose
        events were never handed out are resumed: closing must not strand a stopped process."""
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
        if self._bpf is not None:
            from bcc import lib

            for fd in self._tick_fds.values():
                lib.bpf_close_perf_event_fd(ct.c_int(fd))
            self._tick_fds.clear()
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
