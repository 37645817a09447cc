"""Deprecated: the helpers moved to the support package (tests/support/); import them from there
(``from support.waiting import wait_for``). This re-export keeps tests written against the old
name working until the lead removes it."""

from __future__ import annotations

from support.budget import parse_cpu, yaml_cpu_budget
from support.proc import proc_state, thread_states
from support.standin import write_like_core_writer
from support.victims import Victim
from support.waiting import MIN_WAIT_S, TIMEOUT_SCALE, scaled, wait_for

__all__ = [
    "MIN_WAIT_S",
    "TIMEOUT_SCALE",
    "Victim",
    "parse_cpu",
    "proc_state",
    "scaled",
    "thread_states",
    "wait_for",
    "write_like_core_writer",
    "yaml_cpu_budget",
]
