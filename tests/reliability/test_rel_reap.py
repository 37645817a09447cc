"""A target SIGKILLed while halted must be reaped by the tracer, so that its real parent sees it
die. A traced zombie is visible only to its tracer (kernel/exit.c wait_consider_task); snapd's
release() used to give up on it (PTRACE_DETACH -> ESRCH), leaving the target an unreapable
zombie for as long as the daemon lived: its supervisor never learnt that it had died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.victims import Victim

pytestmark = pytest.mark.kernel

TRACER = """
import sys
from snapd.core import write_core
from snapd.freeze import halt
pid, how = int(sys.argv[1]), sys.argv[2]
if how == "halt":
    h = halt(pid)
    print("halted", flush=True)
    sys.stdin.readline()
    h.resume()
else:
    print("halted", flush=True)  # the test kills the target while this dump runs
    try:
        write_core(pid, sys.argv[3], sync=False)
    except Exception as err:
        print(type(err).__name__, file=sys.stderr)
print("resumed", flush=True)
sys.stdin.readline()  # stay alive: the kernel would reap for a tracer that exits
"""


@pytest.mark.parametrize("how", ["halt", "dump"])
def test_target_killed_while_halted_is_reapable_by_its_parent(
    how: str, spawn: Callable[..., Victim], compile_victim: Callable[..., Path], tmp_path: Path
) -> None:
    for i in range(3):
        v = spawn([compile_victim("bigmem"), 512, 512])
        tracer = subprocess.Popen(
            [sys.executable, "-c", TRACER, str(v.pid), how, str(tmp_path / f"core{i}")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert tracer.stdout is not None and tracer.stdin is not None
            assert tracer.stdout.readline().strip() == "halted"
            if how == "dump":
                time.sleep(0.3)  # while its memory is copied (512 MiB), or just before
            os.kill(v.pid, signal.SIGKILL)
            tracer.stdin.write("\n")
            tracer.stdin.flush()
            assert tracer.stdout.readline().strip() == "resumed"
            # The tracer is still alive: the parent (this test) must be able to reap the victim.
            assert v.proc.wait(5) == -signal.SIGKILL
        finally:
            tracer.kill()
            tracer.wait()
        assert not list(tmp_path.glob(".snapd-partial.*"))
