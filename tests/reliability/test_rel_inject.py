"""A fork snapshot of a target taken over from a job-control stop (the daemon's ``stop: kernel``:
SIGSTOP from the probe, PTRACE_SEIZE, then SIGCONT) used to fail: the SIGCONT leaves a
PTRACE_EVENT_STOP notification trap (kernel/signal.c ptrace_trap_notify) that the injected
clone() met first, and the dump failed with "stopped with 0x80057f instead of entering the call"."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.core import write_core
from snapd.freeze import halt
from support.cores import check_bigmem_core, elf_segments
from support.proc import halted_why
from support.victims import Victim
from support.waiting import scaled, wait_for

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("rounds", [5])
def test_fork_snapshot_after_sigstop_then_sigcont(
    rounds: int, spawn: Callable[..., Victim], compile_victim: Callable[..., Path], tmp_path: Path
) -> None:
    v = spawn([compile_victim("bigmem"), 32, 32])
    buf = int(v.ready_line.split()[1], 16)
    for i in range(rounds):
        os.kill(v.pid, signal.SIGSTOP)  # what the probe's bpf_send_signal(SIGSTOP) does
        wait_for(lambda: halted_why(v.pid), 5, "the victim to stop")
        h = halt(v.pid)
        os.kill(v.pid, signal.SIGCONT)  # as the daemon's worker does once it holds the target
        out = tmp_path / f"core.{i}"
        info = write_core(v.pid, str(out), snapshot="fork", halted=h, replace=False)
        assert info.snapshot == "fork", info.fallback
        elf_segments(str(out))
        check_bigmem_core(str(out), buf, 32)
        wait_for(lambda: halted_why(v.pid) is None, 5, "the victim to run")
    assert v.alive()


def test_target_killed_during_an_injected_call_is_named_at_once(
    spawn: Callable[..., Victim], compile_victim: Callable[..., Path]
) -> None:
    """SIGKILL while we wait for an injected call's stop: the group leader's exit is reported
    only once its other threads (ours to reap) are gone, so the stop never comes. This cost the
    full 5 s timeout and read "thread N did not stop in the injected system call" (seen with
    `snapd gcore --snapshot fork` on a target killed mid-snapshot); now: "no such process"."""
    import time

    from snapd.errors import TargetGone
    from snapd.freeze import inject

    v = spawn([compile_victim("bigmem"), 16, 16])  # three threads
    h = halt(v.pid)
    try:
        os.kill(v.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(TargetGone):
            inject.wait_stop(v.pid, v.pid)
        assert time.monotonic() - t0 < scaled(2.5)  # not inject.wait_stop's whole 5 s
    finally:
        h.resume()
    v.proc.wait(5)  # (we are its tracer and its parent: release() reaped it already)
    assert not os.path.exists(f"/proc/{v.pid}")
