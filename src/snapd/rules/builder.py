"""Building the typed :class:`~snapd.rules.model.Rule` from a composed rule file, key by key.

Every value is checked against the schema (:mod:`snapd.rules.schema`) and the bounds of the
in-kernel program (:mod:`snapd.rules.bounds`); each problem is recorded at its line and column.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from yaml.nodes import Node, ScalarNode, SequenceNode

from snapd.content import SnapshotMode, parse_spec
from snapd.errors import ContentError
from snapd.rules import expr as _expr
from snapd.rules import probespec, sysargs
from snapd.rules import syscalls as _sys
from snapd.rules.bounds import COMM_MAX, GLOB_MAX, MAX_COUNT, MAX_SYSCALLS, MAX_TEXT, WIN_SLOTS
from snapd.rules.model import (
    THEN_ANY,
    Action,
    ActiveWindow,
    CoreAction,
    CpuTrigger,
    EveryTrigger,
    FdsTrigger,
    FunctionTrigger,
    Kind,
    Limits,
    RssTrigger,
    Rule,
    SignalTrigger,
    StopMode,
    SyscallTrigger,
    Target,
    ThreadsTrigger,
    Trigger,
    UsdtTrigger,
)
from snapd.rules.schema import STR, Ctx, Schema, quote_shift, what
from snapd.template import name_problem
from snapd.units import parse_duration, parse_percent, parse_size

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
UNIT_RE = re.compile(r"[A-Za-z0-9:_.@\\-]{1,255}")
ACTIVE_RE = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")
RUN_PLACEHOLDERS = ("core", "rule", "pid", "comm")


def glob_problem(pattern: str) -> str | None:
    """Why a comm glob cannot run in the kernel, or None."""
    if any(c in pattern for c in "[]\\{}"):
        return "comm globs support only '*' and '?'"
    collapsed = re.sub(r"\*+", "*", pattern)
    if len(collapsed) > GLOB_MAX:
        return f"comm pattern longer than {GLOB_MAX} characters"
    if "*" not in collapsed and len(collapsed.encode()) > COMM_MAX:
        return f"comm is at most {COMM_MAX} bytes (the kernel truncates longer names)"
    return None


#: triggers whose probe runs in the target's own thread, so it can stop it (bpf_send_signal)
KERNEL_STOPPABLE = (SyscallTrigger, CpuTrigger, FunctionTrigger, UsdtTrigger, SignalTrigger)
WHEN_KINDS = ("syscall", "function", "usdt")


class RuleBuilder:
    """``RuleBuilder(ctx, path, stem).build(root)``: ``stem`` is the file name without its
    suffix, the rule's name when the file gives none."""

    def __init__(self, ctx: Ctx, path: str, stem: str) -> None:
        self.ctx = ctx
        self.s = Schema(ctx)
        self.path = path
        self.stem = stem

    def build(self, root: Node) -> Rule | None:
        top = self.s.mapping(
            root,
            "rule",
            {
                "name": False,
                "description": False,
                "target": True,
                "trigger": True,
                "action": False,
                "limits": False,
                "active": False,
            },
        )
        if top is None:
            return None
        name = self._name(top)
        description = ""
        if "description" in top:
            description = self.s.string(top["description"][1], "description") or ""
        target = self._target(top["target"][1]) if "target" in top else None
        trigger = self._trigger(top["trigger"][1]) if "trigger" in top else None
        action = self._action(top["action"][1]) if "action" in top else Action()
        limits = self._limits(top["limits"][1]) if "limits" in top else Limits()
        active = self._active(top["active"][1]) if "active" in top else None
        if name is None or target is None or trigger is None or action is None or limits is None:
            return None
        if "active" in top and active is None:
            return None
        armed = isinstance(trigger, EveryTrigger) and trigger.then is not None
        if action.stop is StopMode.KERNEL and not (isinstance(trigger, KERNEL_STOPPABLE) or armed):
            self.ctx.err(
                top["action"][1],
                "action.stop: kernel needs a syscall, function, usdt, signal, cpu or every+then trigger "
                "(the probe that sends SIGSTOP must run in the target)",
            )
            return None
        return Rule(
            name=name,
            target=target,
            trigger=trigger,
            action=action,
            limits=limits,
            description=description,
            active=active,
            path=self.path,
        )

    def _name(self, top: dict[str, tuple[Node, Node]]) -> str | None:
        if "name" in top:
            node = top["name"][1]
            name = self.s.string(node, "name", 64)
            if name is None:
                return None
            if not NAME_RE.fullmatch(name):
                self.ctx.err(
                    node,
                    f"name {name!r} must match [a-z0-9][a-z0-9._-]* (no '/', no "
                    "upper case), at most 64 characters",
                )
                return None
            if ".." in name:
                self.ctx.err(node, f"name {name!r} must not contain '..'")
                return None
            return name
        stem = self.stem
        if not NAME_RE.fullmatch(stem) or ".." in stem:
            self.ctx.err_at(
                1,
                1,
                f"file name {stem!r} is not a valid rule name; add 'name:' matching [a-z0-9][a-z0-9._-]*",
            )
            return None
        return stem

    def _target(self, node: Node) -> Target | None:
        m = self.s.mapping(
            node,
            "target",
            {"pid": False, "comm": False, "exe": False, "unit": False, "cgroup": False, "uid": False},
        )
        if m is None:
            return None
        if not m:
            self.ctx.err(node, "target: give at least one of pid, comm, exe, unit, cgroup, uid")
            return None
        before = len(self.ctx.errors)
        vals: dict[str, Any] = {}
        if "pid" in m:
            vals["pid"] = self.s.integer(m["pid"][1], "target.pid", 1, (1 << 22))
        if "uid" in m:
            vals["uid"] = self.s.integer(m["uid"][1], "target.uid", 0, (1 << 32) - 2)
        if "comm" in m:
            n = m["comm"][1]
            comm = self.s.string(n, "target.comm", 64)
            if comm is not None and (why := glob_problem(comm)):
                self.ctx.err(n, f"target.comm: {why}")
            vals["comm"] = comm
        if "exe" in m:
            n = m["exe"][1]
            exe = self.s.string(n, "target.exe")
            if exe is not None and not exe.startswith("/"):
                self.ctx.err(n, "target.exe: must be an absolute path, like /usr/sbin/nginx")
            vals["exe"] = exe
        if "unit" in m:
            n = m["unit"][1]
            unit = self.s.string(n, "target.unit", 255)
            if unit is not None and (not UNIT_RE.fullmatch(unit) or unit in (".", "..") or "/" in unit):
                self.ctx.err(n, f"target.unit: {unit!r} is not a systemd unit name (like nginx.service)")
            vals["unit"] = unit
        if "cgroup" in m:
            n = m["cgroup"][1]
            cg = self.s.string(n, "target.cgroup")
            if cg is not None and (not cg.startswith("/") or ".." in cg.split("/")):
                self.ctx.err(
                    n,
                    "target.cgroup: must be an absolute cgroup path without '..', "
                    "like /system.slice/nginx.service",
                )
            vals["cgroup"] = cg
        if len(self.ctx.errors) != before:
            return None
        return Target(**vals)

    def _trigger(self, node: Node) -> Trigger | None:
        kinds = tuple(k.value for k in Kind)
        m = self.s.mapping(node, "trigger", {k: False for k in (*kinds, "when", "count", "within", "then")})
        if m is None:
            return None
        given = [k for k in kinds if k in m]
        if len(given) != 1:
            if not given:
                self.ctx.err(node, "trigger: give exactly one of " + ", ".join(kinds))
            else:
                self.ctx.err(
                    m[given[1]][0], f"trigger: only one of {', '.join(kinds)} (got {' and '.join(given)})"
                )
            return None
        kind = given[0]
        for extra in ("when", "count", "within"):
            if extra in m and kind not in (WHEN_KINDS if extra == "when" else ("syscall",)):
                only = "syscall, function and usdt" if extra == "when" else "syscall"
                self.ctx.err(m[extra][0], f"trigger: '{extra}' applies only to {only} triggers")
                return None
        if "then" in m and kind != "every":
            self.ctx.err(m["then"][0], "trigger: 'then' applies only to every triggers")
            return None
        vnode = m[kind][1]
        if kind == "syscall":
            return self._syscall(vnode, m)
        if kind == "function":
            return probespec.build_function(self.s, vnode, self._when(m))
        if kind == "usdt":
            return probespec.build_usdt(self.s, vnode, self._when(m))
        if kind == "signal":
            return probespec.build_signal(self.s, vnode)
        if kind == "every":
            ns = self.s.unit(vnode, "trigger.every", parse_duration)
            if ns is not None and ns < 10_000_000:
                self.ctx.err(vnode, "trigger.every: at least 10ms")
                return None
            then = self._then(m["then"][1]) if "then" in m else None
            if ns is None or ("then" in m and then is None):
                return None
            return EveryTrigger(ns, then)
        if kind == "cpu":
            cm = self.s.mapping(vnode, "trigger.cpu", {"above": True, "for": False})
            if cm is None or "above" not in cm:
                return None
            pct = self.s.unit(cm["above"][1], "trigger.cpu.above", parse_percent)
            for_ns: int | None = 10_000_000_000
            if "for" in cm:
                for_ns = self.s.unit(cm["for"][1], "trigger.cpu.for", parse_duration)
                if for_ns is not None and for_ns < 100_000_000:
                    self.ctx.err(cm["for"][1], "trigger.cpu.for: at least 100ms (the sampler runs at 99 Hz)")
                    return None
            if pct is None or for_ns is None:
                return None
            return CpuTrigger(pct, for_ns)
        am = self.s.mapping(vnode, f"trigger.{kind}", {"above": True})
        if am is None or "above" not in am:
            return None
        anode = am["above"][1]
        if kind == "rss":
            size = self.s.unit(anode, "trigger.rss.above", parse_size)
            return RssTrigger(size) if size is not None else None
        n = self.s.integer(anode, f"trigger.{kind}.above", 1, 1 << 31)
        if n is None:
            return None
        return ThreadsTrigger(n) if kind == "threads" else FdsTrigger(n)

    def _syscall(self, vnode: Node, m: dict[str, tuple[Node, Node]]) -> SyscallTrigger | None:
        items: list[tuple[Node, str | None]] = []
        if isinstance(vnode, SequenceNode) and self.s.tags_ok(vnode):
            if not vnode.value:
                self.ctx.err(vnode, "trigger.syscall: the list is empty")
                return None
            if len(vnode.value) > MAX_SYSCALLS:
                self.ctx.err(vnode.value[MAX_SYSCALLS], f"trigger.syscall: more than {MAX_SYSCALLS} names")
                return None
            items = [(n, self.s.string(n, "trigger.syscall", 64)) for n in vnode.value]
        else:
            items = [(vnode, self.s.string(vnode, "trigger.syscall", 64))]
        names: list[str] = []
        known = _sys.known_names()
        ok = True
        for n, name in items:
            if name is None:
                ok = False
                continue
            if not _sys.NAME_RE.fullmatch(name):
                self.ctx.err(n, f"trigger.syscall: {name!r} is not a syscall name")
                ok = False
                continue
            call = _sys.lookup(name)
            if known is not None and name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.ctx.err(
                    n,
                    f"trigger.syscall: unknown syscall '{name}' (no tracepoint "
                    f"syscalls:sys_enter_{call.tracepoint} on this kernel){hint}",
                )
                ok = False
            elif call.name in names:
                also = f" (as '{call.name}')" if call.name != name else ""
                self.ctx.err(n, f"trigger.syscall: '{name}' is listed twice{also}")
                ok = False
            else:
                names.append(call.name)  # the name users know: sendfile, not sendfile64
        parsed = self._when(m, sysargs.aliases_for(names) if ok else None)
        if parsed is None:
            return None
        when, when_text, wnode = parsed
        if ok and when is not None and wnode is not None:
            self._check_args(wnode, when, names)
            for sc in _expr.strings(when):
                if why := sysargs.string_problem(names, sc.name):
                    self.ctx.err(wnode, f"trigger.when: {sc.name}: {why}", offset=quote_shift(wnode) + sc.pos)
                    return None
        count = 1
        within: int | None = None
        if "count" in m:
            c = self.s.integer(m["count"][1], "trigger.count", 1, MAX_COUNT)
            if c is None:
                return None
            count = c
        if "within" in m:
            wn = m["within"][1]
            within = self.s.unit(wn, "trigger.within", parse_duration)
            if within is None:
                return None
            if count < 2:
                self.ctx.err(m["within"][0], "trigger.within needs count: 2 or more")
                return None
            if count > WIN_SLOTS:
                self.ctx.err(
                    m["count"][1],
                    f"trigger.count: at most {WIN_SLOTS} with 'within' "
                    "(the kernel keeps that many match times per process)",
                )
                return None
        if not ok:
            return None
        return SyscallTrigger(tuple(names), when, when_text, count, within)

    def _then(self, node: Node) -> tuple[str, ...] | None:
        """``then: {syscall: [...]}``: the syscalls that take each tick; ``then: any``: all."""
        if isinstance(node, ScalarNode) and node.tag.endswith(":str"):
            if node.value == THEN_ANY:
                return (THEN_ANY,)
            self.ctx.err(node, f"trigger.then: expected {{syscall: [NAME, ...]}} or {THEN_ANY}")
            return None
        tm = self.s.mapping(node, "trigger.then", {"syscall": True})
        if tm is None or "syscall" not in tm:
            return None
        trig = self._syscall(tm["syscall"][1], {})
        return trig.syscalls if trig is not None else None

    def _when(
        self, m: dict[str, tuple[Node, Node]], aliases: _expr.Aliases | None = None
    ) -> probespec.When | None:
        """The trigger's `when` (expression, text, node), all None when absent; None on error."""
        if "when" not in m:
            return None, None, None
        wnode = m["when"][1]
        text = self.s.string(wnode, "trigger.when", MAX_TEXT)
        if text is None:
            return None
        shift = quote_shift(wnode)
        try:
            when = _expr.parse(text, aliases)
            _expr.compile_expr(when)
        except _expr.ExprError as err:
            self.ctx.err(wnode, f"trigger.when: {err.msg}", offset=shift + err.pos)
            return None
        return when, text, wnode

    def _check_args(self, wnode: Node, when: _expr.Expr, names: list[str]) -> None:
        if high := sorted(when.fields() & _expr.USDT_ONLY):
            self.ctx.err(
                wnode,
                f"trigger.when: {high[0].name.lower()}: a syscall has at most 6 arguments "
                "(arg6..arg11 are a usdt probe's)",
            )
            return
        used = sorted((f for f in when.fields() if _expr.arg_index(f) is not None), key=_expr.ARGS.index)
        if not used:
            return
        for name in names:
            args = _sys.args(name)
            if args is not None and _expr.ARGS.index(used[-1]) >= len(args):
                self.ctx.err(
                    wnode,
                    f"trigger.when: {used[-1].name.lower()} is past the arguments of {name} "
                    f"(it takes {len(args)})",
                )
                return
        for cmp in _comparisons(when):
            if _expr.arg_index(cmp.field) is None:
                continue
            for name in names:
                args = _sys.args(name)
                if args is None:
                    continue
                arg = args[cmp.field]
                lo, hi = arg.kind.range()
                if not lo <= cmp.value <= hi:
                    kind = f"{arg.kind.bits}-bit {'signed' if arg.kind.signed else 'unsigned'}"
                    wrapped = cmp.value & ((1 << arg.kind.bits) - 1)
                    if arg.kind.signed and wrapped > hi:
                        wrapped -= 1 << arg.kind.bits
                    fits = wrapped != cmp.value and lo <= wrapped <= hi
                    hint = f"; did you mean {wrapped}?" if fits else ""
                    self.ctx.err(
                        wnode,
                        f"trigger.when: {cmp.field.name.lower()} of {name} is '{arg.ctype} {arg.name}', "
                        f"a {kind} value: {cmp.value} is out of its range ({lo}..{hi}){hint}",
                    )
                    return

    def _action(self, node: Node) -> Action | None:
        m = self.s.mapping(node, "action", {"stop": False, "snapshot": False, "core": False, "run": False})
        if m is None:
            return None
        before = len(self.ctx.errors)
        stop, snapshot = Action().stop, Action().snapshot
        if "stop" in m:
            stop = self._enum(m["stop"][1], "action.stop", StopMode) or stop
        if "snapshot" in m:
            snapshot = self._enum(m["snapshot"][1], "action.snapshot", SnapshotMode) or snapshot
        core = Action().core
        if "core" in m:
            core = self._core(m["core"][1]) or core
        run: tuple[str, ...] | None = None
        if "run" in m:
            run = self._run(m["run"][1])
        if len(self.ctx.errors) != before:
            return None
        return Action(stop=stop, snapshot=snapshot, core=core, run=run)

    def _enum(self, node: Node, where: str, enum: type[StopMode] | type[SnapshotMode]) -> Any:
        s = self.s.string(node, where)
        if s is None:
            return None
        try:
            return enum(s)
        except ValueError:
            self.ctx.err(node, f"{where}: {s!r} is not one of {', '.join(e.value for e in enum)}")
            return None

    def _core(self, node: Node) -> CoreAction | None:
        m = self.s.mapping(
            node, "action.core", {"content": False, "name": False, "repeat": False, "interval": False}
        )
        if m is None:
            return None
        base = Action().core
        content, name, repeat, interval = base.content, base.name, base.repeat, base.interval_ns
        ok = True
        if "content" in m:
            n = m["content"][1]
            text = self.s.string(n, "action.core.content", 256)
            if text is None:
                ok = False
            else:
                try:
                    content = parse_spec(text)
                except ContentError as err:
                    self.ctx.err(n, f"action.core.content: {err}")
                    ok = False
        if "name" in m:
            n = m["name"][1]
            t = self.s.string(n, "action.core.name", 200)
            if t is None:
                ok = False
            elif why := name_problem(t):
                self.ctx.err(n, f"action.core.name: {why}")
                ok = False
            else:
                name = t
        if "repeat" in m:
            r = self.s.integer(m["repeat"][1], "action.core.repeat", 1, 100)
            ok = ok and r is not None
            repeat = r or repeat
        if "interval" in m:
            iv = self.s.unit(m["interval"][1], "action.core.interval", parse_duration)
            ok = ok and iv is not None
            interval = iv or interval
        return CoreAction(content, name, repeat, interval) if ok else None

    def _run(self, node: Node) -> tuple[str, ...] | None:
        if not isinstance(node, SequenceNode) or not self.s.tags_ok(node):
            self.ctx.err(node, f"action.run: expected a list (an argv; no shell is used), got {what(node)}")
            return None
        if not node.value:
            self.ctx.err(node, "action.run: the list is empty")
            return None
        argv: list[str] = []
        for i, n in enumerate(node.value):
            s = self.s.scalar(n, "action.run", STR)
            if s is None:
                return None
            if i == 0 and not s.startswith("/"):
                self.ctx.err(n, "action.run: the program must be an absolute path")
                return None
            for field in re.findall(r"\{([^{}]*)\}", s):
                if field not in RUN_PLACEHOLDERS:
                    self.ctx.err(
                        n,
                        f"action.run: unknown placeholder '{{{field}}}'; use "
                        + ", ".join("{" + p + "}" for p in RUN_PLACEHOLDERS),
                    )
                    return None
            argv.append(s)
        return tuple(argv)

    def _limits(self, node: Node) -> Limits | None:
        m = self.s.mapping(node, "limits", {"max_cores": False, "min_interval": False})
        if m is None:
            return None
        base = Limits()
        max_cores, min_interval = base.max_cores, base.min_interval_ns
        if "max_cores" in m:
            v = self.s.integer(m["max_cores"][1], "limits.max_cores", 1, 10_000)
            if v is None:
                return None
            max_cores = v
        if "min_interval" in m:
            d = self.s.unit(m["min_interval"][1], "limits.min_interval", parse_duration)
            if d is None:
                return None
            min_interval = d
        return Limits(max_cores, min_interval)

    def _active(self, node: Node) -> ActiveWindow | None:
        s = self.s.string(node, "active", 32)
        if s is None:
            return None
        mt = ACTIVE_RE.fullmatch(s.replace(" ", ""))
        if not mt:
            self.ctx.err(node, f'active: {s!r} must look like "01:00-04:00" (local time)')
            return None
        h1, m1, h2, m2 = (int(g) for g in mt.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            self.ctx.err(node, f"active: {s!r} is not a valid time range")
            return None
        if (h1, m1) == (h2, m2):
            self.ctx.err(node, "active: start and end are equal; leave 'active' out to be always on")
            return None
        return ActiveWindow(h1 * 60 + m1, h2 * 60 + m2)


def _comparisons(e: _expr.Expr) -> list[_expr.Cmp]:
    if isinstance(e, _expr.Cmp):
        return [e]
    if isinstance(e, (_expr.And, _expr.Or)):
        return _comparisons(e.left) + _comparisons(e.right)
    if isinstance(e, _expr.Not):
        return _comparisons(e.operand)
    return []
