"""``python -m snapd.sandbox.child MODULE PARENT RESULT_FD``: the confined side of a bounded run.

Reads two JSON lines from the parent on stdin: ``{"limits": ...}``, then (it may come later:
the module is imported meanwhile) ``{"args": ..., "reads": [...]}``. It confines itself
(:mod:`snapd.sandbox.confine`) before reading the second, imports MODULE, then calls
``MODULE.sandboxed(args)``, whose JSON-able value goes to RESULT_FD as
``{"ok": value, "sandbox": "..."}``; an exception becomes ``{"error": "one line"}``. ``reads``
and ``MODULE.sandbox_reads(args, limits) -> list[str | int]`` (if defined; called before the
lock-down, so it must not read the hostile input itself) are the extra paths (or fds) it must
read, added to the Landlock ruleset.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

from snapd.sandbox import confine
from snapd.sandbox.limits import Limits

MAX_ERROR = 400


def _line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return " ".join(text.split())[:MAX_ERROR]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def main(argv: list[str]) -> int:
    module_name, parent, result_fd = argv[0], int(argv[1]), int(argv[2])
    os.set_inheritable(result_fd, False)
    limits = Limits.from_dict(json.loads(sys.stdin.buffer.readline())["limits"])
    out: dict[str, Any]
    try:
        confine.early(limits, parent)
        module = importlib.import_module(module_name)
        job: dict[str, Any] = json.loads(sys.stdin.buffer.readline() or b"null") or {}
        if "args" not in job:
            raise RuntimeError("the parent sent no arguments")
        args = job["args"]
        reads = getattr(module, "sandbox_reads", None)
        extra = [*job.get("reads", []), *(reads(args, limits) if reads else ())]
        applied = confine.lock_down(limits, extra)
        value = module.sandboxed(args)
        out = {"ok": value, "sandbox": applied}
    except MemoryError:
        out = {"error": f"out of memory (address space limit {limits.address_space >> 20} MiB)"}
    except Exception as err:  # the job's failure, whatever it is, becomes one line
        if os.environ.get("SNAPD_DEBUG") == "1":
            traceback.print_exc()
        out = {"error": _line(err)}
    try:
        data = json.dumps(out, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        data = json.dumps({"error": f"result is not JSON: {_line(err)}"}).encode()
    _write_all(result_fd, data)
    os.close(result_fd)
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    rc = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # no interpreter teardown: nothing of the job's state runs after its answer
