"""The probe program set passes this kernel's verifier, and how much of its budget it uses.

Each program's count is the kernel's own (``verified_insns`` of struct bpf_prog_info, 5.16+:
instructions the verifier walked, against its budget of 1M, include/linux/bpf.h
BPF_COMPLEXITY_LIMIT_INSNS). The lane keeps them per kernel in .cache/kernels/results/
RELEASE.verifier.json (docs/kernels.md lists them)."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import pytest

from snapd.probe import Probes
from snapd.probe.layout import TAIL_CALLS

RESULTS = Path(__file__).resolve().parents[2] / ".cache" / "kernels" / "results"
BUDGET = 1_000_000
_NR_BPF = 321  # x86_64
_BPF_OBJ_GET_INFO_BY_FD = 15
_INFO_SIZE = 232  # sizeof(struct bpf_prog_info) in 6.1's include/uapi/linux/bpf.h
_VERIFIED_INSNS = 216  # offsetof(struct bpf_prog_info, verified_insns)


class _InfoAttr(ctypes.Structure):
    """The BPF_OBJ_GET_INFO_BY_FD part of union bpf_attr."""

    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def verified_insns(fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    info = (ctypes.c_ubyte * _INFO_SIZE)()
    attr = _InfoAttr(fd, _INFO_SIZE, ctypes.addressof(info))
    if libc.syscall(_NR_BPF, _BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ctypes.c_uint32.from_buffer(info, _VERIFIED_INSNS).value)


@pytest.mark.kernel
@pytest.mark.lane
def test_every_program_passes_the_verifier() -> None:
    with Probes() as p:
        p.compile()
        b = p._bpf
        funcs = {name.decode(): f for name, f in b.funcs.items()}
        counts = {name: verified_insns(f.fd) for name, f in sorted(funcs.items())}
        strings_refused = bool(p.strings_error)
        ustrings_refused = bool(p.ustrings_error)
    # snapd_eval_plain is loaded only where the verifier refuses snapd_eval's string matcher,
    # the uprobe programs' _plain pair where it refuses theirs
    evals = {"snapd_eval", "snapd_eval_plain"} & set(counts)
    assert evals == ({"snapd_eval_plain"} if strings_refused else {"snapd_eval"}), counts
    ups = {"snapd_uprobe", "snapd_uretprobe", "snapd_uprobe_plain", "snapd_uretprobe_plain"} & set(counts)
    plain = {"snapd_uprobe_plain", "snapd_uretprobe_plain"}
    assert ups == (plain if ustrings_refused else {"snapd_uprobe", "snapd_uretprobe"}), counts
    want = {fn.decode() for fn, _table, _kind in TAIL_CALLS} - {"snapd_eval"}
    want |= {"snapd_sys_enter", "snapd_sys_exit"}
    want |= {"snapd_raw_enter", "snapd_signal_deliver", "snapd_signal_generate"}
    want |= {f"tracepoint__sched__sched_process_{e}" for e in ("exec", "fork", "exit")}
    assert want <= set(counts), counts
    for name, n in counts.items():
        assert 0 < n < BUDGET, (name, n)
    print(f"verified instructions on {os.uname().release}: {counts}")
    if RESULTS.is_dir() and os.access(RESULTS, os.W_OK):
        (RESULTS / f"{os.uname().release}.verifier.json").write_text(json.dumps(counts, indent=1))
