"""Constants shared by the trigger pieces' .bpf.c files (strings, uprobe, atevent, signal,
armed) and Python, passed to C as -D flags like :mod:`snapd.probe.layout` does for probe.bpf.c.

Phase 2 of issue 14 folds these into layout.cflags() when probe.bpf.c includes the pieces.
This module imports nothing from bcc.
"""

from __future__ import annotations

from enum import IntFlag

from snapd.probe.strings import PF_TAIL_STAR
from snapd.probe.usdt import MAX_ARGS, ArgKind
from snapd.rules.patterns import STR_BYTES
from snapd.rules.sysargs import Source

#: user stack bytes copied at the event (snapd.report.MAX_EVENT_STACK)
EVENT_STACK = 16 * 1024
USER_REGS = 27  # struct user_regs_struct, 27 x u64 (arch/x86/include/asm/user_64.h)
PT_REGS = 21  # struct pt_regs: the first 21 words of user_regs_struct, in the same order
MAX_USITES = 4096  # uprobe/USDT attachment points (cookie = index)
MAX_UINFLIGHT = 16384  # function calls between entry and return, over all threads
#: the `nr` under which a function/usdt rule's string comparisons sit in strsrcs (a uprobe
#: event has no syscall; emit() records -1 for it too)
UPROBE_NR = -1


class SiteFlag(IntFlag):
    """``struct usite.flags``."""

    USDT = 1  # arguments from the USDT operands, not the calling convention
    SAVE_ENTRY = 2  # entry probe of a return rule: record ts and args for the return probe
    RETURN = 4  # the uretprobe half of a return rule


def cflags() -> list[str]:
    out = [
        f"-DSNAPD_STR_BYTES={STR_BYTES}",
        f"-DSTR_PF_TAIL_STAR={PF_TAIL_STAR}",
        f"-DSNAPD_USDT_ARGS={MAX_ARGS}",
        f"-DSNAPD_EVENT_STACK={EVENT_STACK}",
        f"-DSNAPD_MAX_USITES={MAX_USITES}",
        f"-DSNAPD_MAX_UINFLIGHT={MAX_UINFLIGHT}",
        f"-DSNAPD_UPROBE_NR={UPROBE_NR}",
    ]
    out += [f"-DSTR_SRC_{m.name}={m.value}" for m in Source]
    out += [f"-DUA_{m.name}={m.value}" for m in ArgKind]
    out += [f"-DUS_{m.name}={m.value}" for m in SiteFlag]
    return out


__all__ = ["EVENT_STACK", "MAX_USITES", "UPROBE_NR", "USER_REGS", "SiteFlag", "cflags"]
