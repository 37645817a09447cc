"""A job for the sandbox tests (run by ``python -m snapd.sandbox.child sbx_job``)."""
# ruff: noqa: SIM115 (one-shot probes of what the sandbox lets it open)

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any


def sandbox_reads(args: dict[str, Any], limits: object) -> list[str | int]:
    return [args["fd"]] if "fd" in args else []


def _try(fn: Any) -> str:
    try:
        fn()
        return "ok"
    except OSError as err:
        return str(err.strerror)


def sandboxed(args: dict[str, Any]) -> Any:
    what = args["what"]
    if what == "probe":
        status = dict(
            line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
        )
        out = {
            "uid": os.getuid(),
            "groups": os.getgroups(),
            "cap_eff": status["CapEff"].strip(),
            "no_new_privs": status["NoNewPrivs"].strip(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "shadow": _try(lambda: open("/etc/shadow", "rb").read(1)),
            "usr": _try(lambda: open("/usr/bin/true", "rb").read(1)),
            "write_tmp": _try(lambda: open(args["tmp"] + "/written", "w").write("x")),
            "kill_parent": _try(lambda: os.kill(os.getppid(), 0)),
        }
        if "fd" in args:
            out["pread"] = len(os.pread(args["fd"], 4, 0))
            out["reopen"] = _try(lambda: open(f"/proc/self/fd/{args['fd']}", "rb").read(1))
        return out
    if what == "spin":
        while True:
            pass
    if what == "sleep":
        time.sleep(3600)
    if what == "eat":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if what == "segv":
        ctypes.string_at(0)
    if what == "big":
        return "x" * (4 << 20)
    if what == "raise":
        raise ValueError("bad\nthing")
    if what == "fork-and-hang":
        if os.fork() == 0:
            signal.pause()
        time.sleep(3600)
    if what == "echo":
        return args["value"]
    raise AssertionError(what)
