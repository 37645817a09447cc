"""Whether a firing becomes a core (snapd.daemon.limits), decided without a daemon: the rule's
active window, max_cores, min_interval per process, the daemon's sliding-hour cap and its
queue, each reason counted by name. No root, no clock: time is passed in."""

from __future__ import annotations

import datetime as dt

from snapd.daemon.limits import HOUR, Limiter, RuleState
from snapd.rules import Rule, parse_rule

NIGHT = dt.datetime(2026, 11, 27, 2, 30)
NOON = dt.datetime(2026, 11, 27, 12, 0)


def rule(limits: str = "", active: str = "") -> Rule:
    text = "name: r\ntarget: {comm: x}\ntrigger: {syscall: write}\n"
    if limits:
        text += f"limits: {{{limits}}}\n"
    if active:
        text += f"active: '{active}'\n"
    r, errors = parse_rule(text, "r.yaml")
    assert r is not None, [str(e) for e in errors]
    return r


def state(limits: str = "max_cores: 100, min_interval: 1ms", active: str = "") -> RuleState:
    return RuleState(rule(limits, active), digest="d")


P1, P2 = (100, 5000), (200, 6000)  # (pid, start time): a recycled pid is another process


def test_admitted_then_taken_counts() -> None:
    lim, st = Limiter(), state()
    assert lim.admit(st, P1, now=0.0, waiting=0, wall=NOON) is None
    lim.taken(st, P1, 0.0)
    assert st.cores == 1 and st.last_by_process == {P1: 0.0} and list(lim.recent) == [0.0]


def test_outside_the_active_window() -> None:
    lim, st = Limiter(), state(active="01:00-04:00")
    assert lim.admit(st, P1, 0.0, 0, wall=NOON) == "inactive"
    assert lim.admit(st, P1, 0.0, 0, wall=NIGHT) is None
    across = state(active="23:00-01:00")  # crosses midnight
    assert lim.admit(across, P1, 0.0, 0, wall=dt.datetime(2026, 11, 27, 0, 30)) is None
    assert lim.admit(across, P1, 0.0, 0, wall=dt.datetime(2026, 11, 27, 1, 0)) == "inactive"


def test_max_cores_per_rule() -> None:
    lim, st = Limiter(), state("max_cores: 2, min_interval: 1ms")
    for i, p in enumerate([P1, P2]):
        assert lim.admit(st, p, float(i), 0, NOON) is None
        lim.taken(st, p, float(i))
    assert lim.admit(st, (300, 1), 10.0, 0, NOON) == "max_cores"  # whatever the process


def test_min_interval_per_process() -> None:
    lim, st = Limiter(), state("max_cores: 100, min_interval: 5s")
    lim.taken(st, P1, 100.0)
    assert lim.admit(st, P1, 104.9, 0, NOON) == "min_interval"
    assert lim.admit(st, P2, 104.9, 0, NOON) is None  # another process is not held back
    assert lim.admit(st, (P1[0], P1[1] + 1), 104.9, 0, NOON) is None  # nor a recycled pid
    assert lim.admit(st, P1, 105.0, 0, NOON) is None


def test_global_cap_over_a_sliding_hour() -> None:
    lim = Limiter(per_hour=3)
    a, b = state(), state()
    for t in (0.0, 10.0, 20.0):
        lim.taken(a, (int(t), 0), t)
    # the cap is daemon-wide: another rule is held back too
    assert lim.admit(b, P1, 30.0, 0, NOON) == "global_cap"
    assert lim.admit(b, P1, HOUR, 0, NOON) == "global_cap"  # exactly an hour: still inside
    assert lim.admit(b, P1, HOUR + 0.5, 0, NOON) is None  # the first one slid out
    assert list(lim.recent) == [10.0, 20.0]


def test_busy_when_the_queue_is_full() -> None:
    lim, st = Limiter(queue=2), state()
    assert lim.admit(st, P1, 0.0, waiting=1, wall=NOON) is None
    assert lim.admit(st, P1, 0.0, waiting=2, wall=NOON) == "busy"


def test_reasons_in_order() -> None:
    """The first limit that holds names the suppression: inactive, max_cores, min_interval,
    global_cap, busy."""
    lim = Limiter(per_hour=1, queue=0)
    st = state("max_cores: 1, min_interval: 1h", active="01:00-04:00")
    lim.taken(st, P1, 0.0)
    assert lim.admit(st, P1, 1.0, 5, NOON) == "inactive"
    assert lim.admit(st, P1, 1.0, 5, NIGHT) == "max_cores"
    st.cores = 0
    assert lim.admit(st, P1, 1.0, 5, NIGHT) == "min_interval"
    assert lim.admit(st, P2, 1.0, 5, NIGHT) == "global_cap"
    lim.recent.clear()
    assert lim.admit(st, P2, 1.0, 5, NIGHT) == "busy"


def test_to_dict_counts() -> None:
    st = state("max_cores: 4, min_interval: 1ms")
    st.seen, st.cores = 7, 2
    st.suppressed["min_interval"] += 5
    d = st.to_dict()
    assert (d["name"], d["trigger"], d["max_cores"], d["active"]) == ("r", "syscall", 4, "always")
    assert (d["seen"], d["cores"], d["suppressed"]) == (7, 2, {"min_interval": 5})
