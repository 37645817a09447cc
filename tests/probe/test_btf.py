"""snapd.sys.btf finds struct members where the running kernel has them: a BPF program reading
task_struct.tgid at the offset BTF gives sees the pid the kernel's own helper reports."""

from __future__ import annotations

import ctypes as ct
import os

import pytest

from snapd.sys import btf

pytestmark = pytest.mark.kernel


def test_task_struct_offsets_are_the_running_kernels() -> None:
    from bcc import BPF

    tgid = btf.member_offset("task_struct", "tgid")
    leader = btf.member_offset("task_struct", "group_leader")
    b = BPF(
        text="""
        BPF_ARRAY(out, u64, 2);
        TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
            char *t = (char *)bpf_get_current_task();
            char *leader = NULL;
            u32 tgid = 0, ltgid = 0, k0 = 0, k1 = 1;
            bpf_probe_read_kernel(&tgid, 4, t + TGID_OFF);
            bpf_probe_read_kernel(&leader, 8, t + LEADER_OFF);
            bpf_probe_read_kernel(&ltgid, 4, leader + TGID_OFF);
            if ((bpf_get_current_pid_tgid() >> 32) != MYPID)
                return 0;
            u64 a = tgid, c = ltgid;
            out.update(&k0, &a);
            out.update(&k1, &c);
            return 0;
        }""",
        cflags=[f"-DTGID_OFF={tgid}", f"-DLEADER_OFF={leader}", f"-DMYPID={os.getpid()}"],
    )
    try:
        os.getppid()
        assert b[b"out"][ct.c_int(0)].value == os.getpid()
        assert b[b"out"][ct.c_int(1)].value == os.getpid()
    finally:
        b.cleanup()


def test_unknown_members_and_structs_are_a_btf_error() -> None:
    with pytest.raises(btf.BtfError):
        btf.member_offset("task_struct", "no_such_member")
    with pytest.raises(btf.BtfError):
        btf.member_offset("no_such_struct_anywhere", "x")
