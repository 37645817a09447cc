"""The rule language's bounds: what one rule may ask of the kernel, and what one rule file may
cost to read.

The first group sizes probe.bpf.c (:mod:`snapd.probe.layout` passes them to C as -D flags), so
the loader refuses, with a line and column, what the in-kernel program could not hold. The
second keeps a hostile file's cost linear and small (tests/security): every check is cheap per
item, but a "did you mean" (difflib) per unknown key or syscall is not, and 256 KiB holds tens
of thousands of them.
"""

from __future__ import annotations

# --- what the in-kernel program holds ---------------------------------------------------------
MAX_INSNS = 16  # instructions per `when` predicate (probe.bpf.c SNAPD_MAX_INSNS)
MAX_STACK = 32  # the predicate's boolean stack: bits of one register, with room to spare
GLOB_MAX = 30  # comm pattern positions in probe.bpf.c's u32 shift-and state
WIN_SLOTS = 128  # probe.bpf.c SNAPD_WIN_SLOTS: the largest count that may take `within`
COMM_MAX = 15  # TASK_COMM_LEN - 1 (include/linux/sched.h)

# --- what reading one file may cost -----------------------------------------------------------
MAX_FILE_BYTES = 256 * 1024
MAX_TEXT = 1024  # characters of `when` text
MAX_COUNT = 1_000_000  # trigger.count
MAX_KEYS = 64  # keys in one mapping; the largest in the schema has 9
MAX_SYSCALLS = 512  # names in trigger.syscall; x86_64 has about 460 syscalls
# Digits of an integer scalar: int() refuses more than 4300 decimal digits with ValueError
# (Python's int_max_str_digits), and nothing in a rule needs more than 20.
MAX_INT_CHARS = 64
