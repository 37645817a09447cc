"""ptrace's EPERM while halting: a refusal for a task whose exit had begun (an exec by another
thread kills the leader and gives its pid to the exec'ing thread, fs/exec.c de_thread) is
asked again and the halt goes on; a refusal that stays is "not permitted", with the target
left as it was. The kernel's answer is injected at the seize (snapd.sys.ptrace.seize): the
race it stands for is a few microseconds wide (tests/reliability/test_rel_races.py meets it
now and then)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.errors import NotPermitted
from snapd.freeze import halted
from support.proc import thread_states, tracer_of
from support.victims import Victim
from support.waiting import wait_for

pytestmark = pytest.mark.kernel


def refusing(monkeypatch: pytest.MonkeyPatch, pid: int, times: int) -> list[int]:
    """Make the first ``times`` seizes of ``pid`` fail with EPERM; returns the seize log."""
    real = halted.pt.seize
    tried: list[int] = []

    def seize(tid: int, *a: object, **kw: object) -> None:
        tried.append(tid)
        if tid == pid and tried.count(pid) <= times:
            raise OSError(errno.EPERM, "Operation not permitted")
        real(tid, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(halted.pt, "seize", seize)
    return tried


def test_a_refusal_that_passes_is_asked_again(
    monkeypatch: pytest.MonkeyPatch, compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    v = spawn([compile_victim("threads")])
    tried = refusing(monkeypatch, v.pid, 1)
    h = halted.halt(v.pid)
    try:
        assert tried.count(v.pid) == 2
        assert set(h.threads) == set(thread_states(v.pid)), "every thread halted"
        assert all(s in "tT" for s in thread_states(v.pid).values())
    finally:
        h.resume()
    wait_for(lambda: tracer_of(v.pid) == 0, 10, "detached")


def test_a_refusal_that_stays_is_not_permitted(
    monkeypatch: pytest.MonkeyPatch, compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> None:
    v = spawn([compile_victim("threads")])
    tried = refusing(monkeypatch, v.pid, 1000)
    with pytest.raises(NotPermitted):
        halted.halt(v.pid)
    assert tried.count(v.pid) == 1 + len(halted.REFUSAL_RETRIES), "asked again a bounded number of times"
    wait_for(lambda: tracer_of(v.pid) == 0, 10, "nothing left seized")
    assert not [s for s in thread_states(v.pid).values() if s in "tT"]
