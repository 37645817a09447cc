"""CPU bounds relative to a calibration on this machine, never absolute seconds."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _min_cpu(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


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


def cpu_of(fn: Callable[[], T], budget: float, retries: int = 2) -> tuple[T, float]:
    """(``fn()``, the CPU seconds it took): once, and when that is over ``budget``, again up to
    ``retries`` times, keeping the least. A cost that grows with the input (a blow-up) is
    there every time; a collection of the garbage of a long hypothesis run, or a module
    imported on first use, is there once."""
    c0 = time.process_time()
    result = fn()
    cpu = time.process_time() - c0
    for _ in range(retries):
        if cpu < budget:
            break
        cpu = min(cpu, _min_cpu(fn, 1))
    return result, cpu
