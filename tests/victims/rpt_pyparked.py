"""A CPython victim for the report tests: worker threads parked in named functions (each blocked
in os.read, which releases the GIL), then the main thread parks in a C call that keeps the GIL
(ctypes.PyDLL). Prints "ready <main tid> <worker tids...>" once every worker is in read(2)."""

import ctypes
import os
import threading
import time
from pathlib import Path


def rpt_park_alpha(fd):
    os.read(fd, 1)  # PARK alpha


def rpt_park_beta(fd):
    os.read(fd, 1)  # PARK beta


def rpt_middle(fn, fd):
    fn(fd)  # PARK middle


def rpt_hold_gil():
    ctypes.PyDLL(None).pause()  # PARK gil


def main():
    pipes = [os.pipe() for _ in range(3)]
    tids = []
    started = threading.Barrier(4)

    def run(fn, fd):
        tids.append(threading.get_native_id())
        started.wait()
        rpt_middle(fn, fd)

    funcs = (rpt_park_alpha, rpt_park_beta, rpt_park_beta)
    threads = [
        threading.Thread(target=run, args=(f, p[0]), daemon=True) for f, p in zip(funcs, pipes, strict=True)
    ]
    for t in threads:
        t.start()
    started.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # every worker in read(2): the GIL is released
        try:
            calls = [Path(f"/proc/self/task/{t}/syscall").read_text().split()[0] for t in tids]
        except OSError:
            calls = []
        if len(calls) == 3 and all(c == "0" for c in calls):
            break
        time.sleep(0.01)
    print("ready", threading.get_native_id(), *tids, flush=True)
    rpt_hold_gil()


main()
