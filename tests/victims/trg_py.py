"""trg_py: calls one Python function per line read, for the USDT tests (python:function__entry).

Run with /usr/bin/python3.11 (Debian's, built with --with-dtrace). Prints "ready <pid> line=<N>"
(N: the line of ``def trg_fn``) and answers each input line with "done <tid> <result> 0": a
line "x N" calls trg_fn(N), "o N" trg_other(N), "a N" raises the audit event "trg.audit" with N.

With the argument ``profile`` it first installs a profile function, and a C one (``slice`` takes
the three arguments and runs no Python): CPython 3.11 fires function__entry/return and line
only while a trace or profile function is set (the DTrace hooks sit behind
``cframe.use_tracing`` in ceval.c), whatever the probes' semaphores say.
"""

import os
import sys
import threading


def trg_fn(n):
    return n + 1


def trg_other(n):
    return n + 2


if "profile" in sys.argv[1:]:
    sys.setprofile(slice)
print("ready", os.getpid(), f"line={trg_fn.__code__.co_firstlineno}", flush=True)
for line in sys.stdin:
    cmd, arg = line.split()
    if cmd == "a":
        sys.audit("trg.audit", int(arg))
        r = 0
    elif cmd == "o":
        r = trg_other(int(arg))
    else:
        r = trg_fn(int(arg))
    print("done", threading.get_native_id(), r, 0, flush=True)
