"""MemoryDenyWriteExecute, measured rather than assumed (see the unit's comment)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from support.paths import child_env

BCC_UNDER_MDWE = textwrap.dedent(
    """
    import ctypes, os
    from support.mdwe import load_systemd_mdwe
    load_systemd_mdwe()
    from bcc import BPF
    b = BPF(text=r'''
    BPF_PERF_OUTPUT(events);
    TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
        u32 pid = bpf_get_current_pid_tgid() >> 32;
        events.perf_submit(args, &pid, sizeof(pid));
        return 0;
    }
    ''')
    got = []
    def cb(cpu, data, size):
        got.append(ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32)).contents.value)
    b["events"].open_perf_buffer(cb)
    for _ in range(100):
        os.getppid()
        b.perf_buffer_poll(timeout=100)
        if os.getpid() in got:
            break
    print("bcc-ok" if os.getpid() in got else "bcc-no-events", flush=True)
    """
)

JIT_CHILD_UNDER_MDWE = textwrap.dedent(
    """
    import mmap, subprocess, sys
    from support.mdwe import load_systemd_mdwe
    load_systemd_mdwe()
    # What a JIT does first, in a child started the way action.run starts one.
    child = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    print("jit-refused" if r.returncode != 0 and "Operation not permitted" in r.stderr else "jit-ok")
    """
)


def _bcc_available() -> bool:
    return subprocess.run([sys.executable, "-c", "import bcc"], capture_output=True).returncode == 0


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.skipif(not _bcc_available(), reason="bcc (python3-bpfcc) not importable")
def test_bcc_compiles_attaches_and_polls_under_systemd_mdwe() -> None:
    r = subprocess.run(
        [sys.executable, "-c", BCC_UNDER_MDWE], capture_output=True, text=True, timeout=300, env=child_env()
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bcc-ok" in r.stdout, r.stdout + r.stderr[-2000:]


@pytest.mark.kernel
def test_mdwe_is_inherited_by_action_children() -> None:
    r = subprocess.run(
        [sys.executable, "-c", JIT_CHILD_UNDER_MDWE],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert r.returncode == 0, r.stderr
    assert "jit-refused" in r.stdout, "why the unit leaves MemoryDenyWriteExecute off"
