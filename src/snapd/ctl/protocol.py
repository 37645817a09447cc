"""The ctl wire protocol: one JSON object per line over a Unix stream socket.

Request:  ``{"cmd": "list-cores", "args": {"rule": "oom"}}``
Reply:    ``{"ok": true, "result": ...}`` or ``{"ok": false, "code": "denied", "error": "..."}``

A connection may carry several requests; replies come in order. A request line longer than
:data:`MAX_REQUEST` bytes is refused and the connection closed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

from snapd.errors import SnapdError

DEFAULT_GROUP = "snapd"
MAX_REQUEST = 64 * 1024
MAX_REPLY = 512 << 20


class Access(IntEnum):
    """What a peer may do: decided once per connection from SO_PEERCRED (socket(7))."""

    NONE = 0
    READ = 1  # members of the snapd group
    ADMIN = 2  # root


class Code:
    BAD_REQUEST = "bad-request"
    DENIED = "denied"
    NOT_FOUND = "not-found"
    FAILED = "failed"
    INTERNAL = "internal"
    TOO_LARGE = "too-large"


# command -> (access needed, {arg: (type, required)})
_INT = int
_STR = str
_NUM = (int, float)
COMMANDS: dict[str, tuple[Access, dict[str, tuple[Any, bool]]]] = {
    "list-cores": (
        Access.READ,
        {"rule": (_STR, False), "pid": (_INT, False), "since": (_NUM, False), "all": (bool, False)},
    ),
    "info": (Access.READ, {"id": (_INT, True)}),
    "diff": (Access.READ, {"a": (_INT, True), "b": (_INT, True), "top": (_INT, False)}),
    "series": (Access.READ, {"id": (_INT, True)}),
    "status": (Access.READ, {}),
    "rules": (Access.READ, {}),
    "rm": (Access.ADMIN, {"id": (_INT, True)}),
    "snap": (Access.ADMIN, {"pid": (_INT, True), "content": (_STR, False), "snapshot": (_STR, False)}),
    "pause": (Access.ADMIN, {"reason": (_STR, False)}),
    "resume": (Access.ADMIN, {}),
    "reload": (Access.ADMIN, {}),
}


class CtlError(SnapdError):
    """A ctl request failed; ``code`` is one of :class:`Code`."""

    def __init__(self, msg: str, code: str = Code.FAILED) -> None:
        super().__init__(msg)
        self.code = code


def encode(obj: Mapping[str, Any]) -> bytes:
    # ensure_ascii: target-controlled strings (comm, paths) travel as \u escapes, never raw
    # control bytes, and never break the line framing.
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=str).encode() + b"\n"


def request(cmd: str, **args: Any) -> bytes:
    return encode({"cmd": cmd, "args": {k: v for k, v in args.items() if v is not None}})


I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1  # what SQLite binds (and every id or pid fits)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys; one meaning per request, whoever reads it.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key[:40]!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Decode and validate one request line; raise :class:`CtlError` (bad-request) if wrong.

    Everything a client can send ends here as bad-request, never as an internal error with a
    traceback in the daemon's log (tests/security/test_ctl_hostile.py): nesting too deep for
    the decoder (RecursionError), integers SQLite cannot bind (OverflowError), strings with
    lone surrogates (``"\\ud800"``: UnicodeEncodeError), NaN/Infinity, duplicate keys.
    """
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise CtlError(f"malformed request: not JSON ({why})", Code.BAD_REQUEST) from err
    if not isinstance(obj, dict):
        raise CtlError("malformed request: expected a JSON object", Code.BAD_REQUEST)
    cmd = obj.get("cmd")
    args = obj.get("args", {})
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        known = ", ".join(COMMANDS)
        raise CtlError(f"unknown command {str(cmd)[:40]!r}; known: {known}", Code.BAD_REQUEST)
    if not isinstance(args, dict):
        raise CtlError("malformed request: 'args' must be an object", Code.BAD_REQUEST)
    spec = COMMANDS[cmd][1]
    for key, value in args.items():
        if key not in spec:
            raise CtlError(f"{cmd}: unknown argument {str(key)[:40]!r}", Code.BAD_REQUEST)
        typ, _ = spec[key]
        # bool is an int to Python: accept it only where a bool is wanted
        if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
            raise CtlError(f"{cmd}: argument {key!r} has the wrong type", Code.BAD_REQUEST)
        if isinstance(value, int) and not I64_MIN <= value <= I64_MAX:
            raise CtlError(f"{cmd}: argument {key!r} is out of range", Code.BAD_REQUEST)
        if isinstance(value, float) and not math.isfinite(value):  # 1e999 decodes as inf
            raise CtlError(f"{cmd}: argument {key!r} is out of range", Code.BAD_REQUEST)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise CtlError(f"{cmd}: argument {key!r} is not valid Unicode", Code.BAD_REQUEST) from err
    for key, (_, required) in spec.items():
        if required and key not in args:
            raise CtlError(f"{cmd}: missing argument {key!r}", Code.BAD_REQUEST)
    return cmd, dict(args)


def ok(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


def error(code: str, msg: str) -> bytes:
    return encode({"ok": False, "code": code, "error": msg})
