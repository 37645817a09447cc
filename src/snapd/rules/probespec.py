"""The `function` and `usdt` triggers of a rule file: their keys, the text of ``binary``,
``symbol`` and ``probe``, and what their `when` may read.

Only the text is checked here (the rules stage reads no ELF file): whether the binary has the
symbol or the probe is decided by snapd.probe.symbols / snapd.probe.usdt when the rule is
armed, or by `snapd check` as root, and reported at the key's line and column (the trigger
keeps them as :class:`~snapd.rules.model.KeyMark`).
"""

from __future__ import annotations

import re
import signal as _signal
from collections.abc import Callable

from yaml.nodes import Node, SequenceNode

from snapd.rules import expr as _expr
from snapd.rules.model import FunctionTrigger, KeyMark, ProbeAt, SignalTrigger, UsdtTrigger
from snapd.rules.schema import Schema, quote_shift

#: a trigger's parsed `when`: (expression, its text, its node), all None when absent
When = tuple[_expr.Expr | None, str | None, Node | None]

BINARY_MAX = 4096  # PATH_MAX
SYMBOL_MAX = 512  # bytes of a symbol name (mangled C++ names run long)
#: a USDT provider or probe name (sys/sdt.h pastes them into C identifiers)
PROBE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ENTRY_FIELDS = frozenset(_expr.Field(i) for i in range(6)) | {
    _expr.Field.PID,
    _expr.Field.TID,
    _expr.Field.UID,
}
RETURN_FIELDS = ENTRY_FIELDS | {_expr.Field.RET, _expr.Field.LATENCY}
USDT_FIELDS = ENTRY_FIELDS | _expr.USDT_ONLY
#: what a string comparison of a function/usdt rule may name: an argument holding a `char *`
#: (DTrace's copyinstr(argN), bpftrace's str(argN)); the kernel reads it as a C string
STRING_ARGS = {f"arg{i}": i for i in range(6)}


def fields_read(when: _expr.Expr) -> frozenset[_expr.Field]:
    """What a function/usdt rule's `when` reads at the probe: its fields, and the argument
    holding each string it compares (str0..3 themselves are the matcher's outcomes)."""
    named = {_expr.Field(_expr.Field.ARG0 + STRING_ARGS[sc.name]) for sc in _expr.strings(when)}
    return when.fields() | named


def binary_problem(spec: str) -> str | None:
    """Why ``spec`` cannot name a binary (an absolute path or a library name), or None."""
    if not spec:
        return "must not be empty"
    if "\0" in spec:
        return "must not contain NUL bytes"
    if len(spec.encode("utf-8", "surrogateescape")) > BINARY_MAX:
        return f"longer than {BINARY_MAX} bytes"
    bad = next((c for c in spec if not c.isprintable()), None)
    if bad is not None:
        return f"character U+{ord(bad):04X} cannot be part of a file name here"
    if "/" in spec and not spec.startswith("/"):
        return f"{spec!r}: give an absolute path or a library name like libc.so.6"
    return None


def symbol_problem(name: str) -> str | None:
    """Why ``name`` cannot be a symbol a rule means: empty, too long, control, NUL or space
    bytes. None when it can."""
    if not name:
        return "must not be empty"
    if len(name.encode("utf-8", "surrogateescape")) > SYMBOL_MAX:
        return f"longer than {SYMBOL_MAX} bytes"
    bad = next((c for c in name if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        return f"character U+{ord(bad):04X} cannot be part of a symbol name"
    return None


def probe_problem(spec: str) -> str | None:
    """Why ``spec`` is not ``provider:name``, or None."""
    provider, sep, name = spec.partition(":")
    if not sep or not PROBE_NAME_RE.fullmatch(provider) or not PROBE_NAME_RE.fullmatch(name):
        return f"{spec!r} is not provider:name (like python:function__entry)"
    return None


def _mark(key: str, node: Node) -> KeyMark:
    return KeyMark(key, node.start_mark.line + 1, node.start_mark.column + 1)


def _text(s: Schema, node: Node, where: str, max_len: int, check: Callable[[str], str | None]) -> str | None:
    text = s.string(node, where, max_len * 4)
    if text is None:
        return None
    why = check(text)
    if why:
        s.ctx.err(node, f"{where}: {why}")
        return None
    return text


def _check_fields(
    s: Schema, wnode: Node, when: _expr.Expr, allowed: frozenset[_expr.Field], kind: str
) -> bool:
    for sc in _expr.strings(when):
        if sc.name not in STRING_ARGS:
            s.ctx.err(
                wnode,
                f"trigger.when: {sc.name}: a {kind} trigger compares strings at arg0..arg5 "
                "(each a pointer to a NUL-terminated string, read from the target)",
                offset=quote_shift(wnode) + sc.pos,
            )
            return False
    bad = sorted(when.fields() - allowed - _expr.STRS)
    if not bad:
        return True
    names = ", ".join(sorted(f.name.lower() for f in allowed))
    hint = " (ret and latency need at: return)" if kind == "function at entry" else ""
    s.ctx.err(
        wnode, f"trigger.when: {bad[0].name.lower()} is not known to a {kind} trigger; it reads {names}{hint}"
    )
    return False


def build_function(s: Schema, vnode: Node, parsed: When | None) -> FunctionTrigger | None:
    """``trigger.function`` (``parsed``: the trigger's `when`, None when it was wrong)."""
    fm = s.mapping(vnode, "trigger.function", {"binary": True, "symbol": True, "at": False})
    if fm is None or "binary" not in fm or "symbol" not in fm:
        return None
    binary = _text(s, fm["binary"][1], "trigger.function.binary", BINARY_MAX, binary_problem)
    symbol = _text(s, fm["symbol"][1], "trigger.function.symbol", SYMBOL_MAX, symbol_problem)
    at = ProbeAt.ENTRY
    if "at" in fm:
        anode = fm["at"][1]
        word = s.string(anode, "trigger.function.at", 16)
        if word is None:
            return None
        if word not in {a.value for a in ProbeAt}:
            s.ctx.err(anode, f"trigger.function.at: {word!r} is not one of entry, return")
            return None
        at = ProbeAt(word)
    if binary is None or symbol is None or parsed is None:
        return None
    when, text, wnode = parsed
    if when is not None and wnode is not None:
        allowed = RETURN_FIELDS if at is ProbeAt.RETURN else ENTRY_FIELDS
        if not _check_fields(s, wnode, when, allowed, f"function at {at.value}"):
            return None
    marks = (_mark("binary", fm["binary"][1]), _mark("symbol", fm["symbol"][1]))
    return FunctionTrigger(binary, symbol, at, when, text, marks)


def build_usdt(s: Schema, vnode: Node, parsed: When | None) -> UsdtTrigger | None:
    """``trigger.usdt`` (``parsed`` as for :func:`build_function`)."""
    um = s.mapping(vnode, "trigger.usdt", {"binary": True, "probe": True})
    if um is None or "binary" not in um or "probe" not in um:
        return None
    binary = _text(s, um["binary"][1], "trigger.usdt.binary", BINARY_MAX, binary_problem)
    probe = _text(s, um["probe"][1], "trigger.usdt.probe", 260, probe_problem)
    if binary is None or probe is None or parsed is None:
        return None
    when, text, wnode = parsed
    if when is not None and wnode is not None and not _check_fields(s, wnode, when, USDT_FIELDS, "usdt"):
        return None
    provider, _, name = probe.partition(":")
    marks = (_mark("binary", um["binary"][1]), _mark("probe", um["probe"][1]))
    return UsdtTrigger(binary, provider, name, when, text, marks)


#: what no tracer can halt a process before: why, for the message
UNCATCHABLE = {
    "SIGKILL": "SIGKILL cannot be caught, so nothing runs between its sending and the death",
    "SIGSTOP": "SIGSTOP cannot be caught (the kernel stops the process itself)",
    "SIGCONT": "SIGCONT resumes a process before any handler runs; use a syscall trigger",
}


def build_signal(s: Schema, vnode: Node) -> SignalTrigger | None:
    """``trigger.signal``: one signal name or a list (SIGTERM, TERM, 15 are not all accepted:
    names with the SIG prefix only, as kill -l prints them)."""
    nodes = vnode.value if isinstance(vnode, SequenceNode) and s.tags_ok(vnode) else [vnode]
    if not nodes:
        s.ctx.err(vnode, "trigger.signal: the list is empty")
        return None
    out: list[int] = []
    for n in nodes[:65]:
        name = s.string(n, "trigger.signal", 16)
        if name is None:
            return None
        if name in UNCATCHABLE:
            s.ctx.err(n, f"trigger.signal: {UNCATCHABLE[name]}")
            return None
        sig = getattr(_signal.Signals, name, None) if name.startswith("SIG") and name.isupper() else None
        if not isinstance(sig, _signal.Signals):
            s.ctx.err(n, f"trigger.signal: {name!r} is not a signal name (like SIGTERM, SIGUSR1)")
            return None
        if int(sig) in out:
            s.ctx.err(n, f"trigger.signal: {name} is listed twice")
            return None
        out.append(int(sig))
    return SignalTrigger(tuple(out))
