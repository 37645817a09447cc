"""What the log says when a rule's targets come or go after its load (snapd.daemon.targetlog)."""

from __future__ import annotations

from snapd.daemon.targetlog import BURST, REFILL_S, TargetLog


def comm(pid: int) -> str:
    return f"c{pid}"


def test_a_waiting_rule_that_gains_a_target_says_so_then_when_it_goes() -> None:
    t = TargetLog()
    t.loaded(False, 0.0)
    assert t.observe("r", [], "waiting for target", 2.0, comm) is None
    assert t.observe("r", [7, 9], "armed", 4.0, comm) == (
        "rule r: armed, 2 process(es) targeted now: 7 (c7), 9 (c9)"
    )
    assert t.observe("r", [7], "armed", 6.0, comm) is None  # still targeted: nothing new
    assert t.observe("r", [], "waiting for target", 8.0, comm) == (
        "rule r: waiting for target: no process targeted any more"
    )


def test_many_targets_are_named_up_to_three() -> None:
    t = TargetLog()
    line = t.observe("r", [1, 2, 3, 4, 5], "armed", 1.0, comm)
    assert line == "rule r: armed, 5 process(es) targeted now: 1 (c1), 2 (c2), 3 (c3) and 2 more"


def test_a_flapping_target_is_rate_limited_and_the_log_ends_in_the_present_state() -> None:
    t = TargetLog()
    t.loaded(False, 0.0)
    lines = []
    now = 0.0
    for i in range(40):  # a target there every other rescan, for 80 s
        now += 2.0
        line = t.observe("r", [5] if i % 2 == 0 else [], "s", now, comm)
        if line:
            lines.append(line)
    assert BURST <= len(lines) <= BURST + 80 / REFILL_S + 1, lines
    assert "changes since the last line" in lines[-1], lines
    # The flapping stops with the target gone; the last line must say so once a line is due.
    for _ in range(int(REFILL_S / 2) + 1):
        now += 2.0
        line = t.observe("r", [], "waiting for target", now, comm)
        if line:
            lines.append(line)
    assert lines[-1].startswith("rule r: waiting for target: no process targeted any more"), lines


def test_the_load_line_counts_as_told() -> None:
    t = TargetLog()
    t.loaded(True, 0.0)
    assert t.observe("r", [3], "armed", 2.0, comm) is None
