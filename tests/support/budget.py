"""CPU bounds relative to a calibration on this machine, never absolute seconds."""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _min_cpu(fn: Callable[[], object], rounds: int) -> float:
    """The least CPU time of ``rounds`` calls, the garbage collector held off: a full collection
    of the test process's heap (hypothesis keeps a lot) costs ~100 ms and says nothing about
    the code measured."""
    best = float("inf")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            c0 = time.process_time()
            fn()
            best = min(best, time.process_time() - c0)
    finally:
        if enabled:
            gc.enable()
    return best


def parse_cpu(fn: Callable[[], T], size: int) -> tuple[T, float, float]:
    """``(fn(), cpu seconds, budget)`` for parsing ``size`` bytes; a run over the budget is
    measured twice more and the least taken (a real blow-up exceeds it every time)."""
    budget = yaml_cpu_budget()(size)
    out: list[T] = []

    def once() -> None:
        out.append(fn())

    cpu = _min_cpu(once, 1)
    if cpu >= budget:
        cpu = min(cpu, _min_cpu(once, 2))
    return out[0], cpu, budget


@functools.cache
def yaml_cpu_budget(factor: float = 2.0, floor_factor: float = 200.0) -> Callable[[int], float]:
    """CPU seconds parsing a rule file of ``size`` bytes may take on this machine.

    At most ``factor`` x what PyYAML itself takes to compose the densest valid YAML of that size
    (a flow sequence of two-letter items), plus ``floor_factor`` x the cost of a small valid
    rule: linear in the size, no blow-up, whatever the machine's speed. Calibrated once per run,
    in CPU time (process_time: immune to other jobs on a shared CI machine)."""
    import yaml

    from snapd.rules import parse_rule
    from snapd.rules.bounds import MAX_FILE_BYTES
    from snapd.rules.compose import _StrictLoader

    dense = "x: [" + ", ".join(["ab"] * (MAX_FILE_BYTES // 4)) + "]\n"
    per_byte = _min_cpu(lambda: yaml.compose(dense, Loader=_StrictLoader), 3) / len(dense)
    small = "name: good\ntarget: {comm: nginx}\ntrigger: {every: 10s}\n"
    floor = _min_cpu(lambda: parse_rule(small, "small.yaml"), 5)
    return lambda size: factor * per_byte * size + floor_factor * floor
