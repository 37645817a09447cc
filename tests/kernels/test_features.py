"""snapd.kernel: what the running kernel offers, probed, and said where a user looks for it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import DaemonHarness, Victims

from snapd import kernel
from snapd.kernel import FEATURES, Feature, KernelFeatureMissing, Probed
from snapd.probe import Probes
from snapd.probe.probes import ProbeError
from snapd.rules import RuleError, parse_rule
from snapd_testlib import Victim


@pytest.mark.kernel
@pytest.mark.lane
def test_every_probe_answers_as_root() -> None:
    """As root nothing is "cannot tell", and everything without a fallback is there (CI's and the
    lane's kernels run every trigger: a missing one would fail those tests, not be skipped)."""
    for p in kernel.report():
        assert p.present is not None, p.line()
        assert p.detail, p
        if FEATURES[p.feature].fallback is None:
            assert p.present, p.line()
    kernel.require(kernel.PROBE_FEATURES, "the lane")


@pytest.mark.kernel
@pytest.mark.lane
def test_gcore_verbose_says_what_it_uses(
    compile_victim: Callable[..., Path], spawn: Callable[..., Victim], snapd_cmd: list[str], tmp_path: Path
) -> None:
    v = spawn([compile_victim("threads")])
    r = subprocess.run(
        [*snapd_cmd, "gcore", "-v", "-o", str(tmp_path / "core"), str(v.pid)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    if kernel.has(Feature.PAGEMAP_SCAN):
        assert "pagemap_scan: yes" in r.stderr, r.stderr
    else:
        assert "pagemap_scan: no (" in r.stderr and "; using /proc/PID/pagemap" in r.stderr, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith(f"snapd gcore: {tmp_path}/core.{v.pid} dumped (frozen "), r.stdout
    assert any(line.startswith(f"snapd gcore: pid {v.pid}: snapshot: frozen") for line in out), r.stdout


@pytest.mark.kernel
@pytest.mark.lane
def test_ctl_status_names_the_kernel_and_its_fallbacks(daemon: DaemonHarness, victims: Victims) -> None:
    daemon.start()
    st = daemon.status()["kernel"]
    assert st["release"] == os.uname().release
    assert set(st) == {"release", *(f.value for f in Feature)}
    want = "yes" if kernel.has(Feature.PAGEMAP_SCAN) else "no: using /proc/PID/pagemap"
    assert st["pagemap_scan"].startswith(want), st
    text = daemon.ctl("status").stdout
    assert "kernel:" in text and "pagemap_scan" in text, text
    assert f"kernel {os.uname().release}: " in daemon.log_text()


def test_a_missing_feature_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without the BPF ring buffer (before 5.8): every rule is refused, naming it."""
    lacking = Probed(Feature.BPF_RINGBUF, False, "BPF_MAP_CREATE: EINVAL")
    real = kernel.probe
    monkeypatch.setattr(kernel, "probe", lambda f: lacking if f is Feature.BPF_RINGBUF else real(f))
    text = "name: r\ntarget: {comm: nothing-here}\ntrigger: {syscall: getppid}\n"
    rule, errors = parse_rule(text, "r.yaml")
    assert rule is not None and not errors
    with Probes() as p, pytest.raises(RuleError) as exc:
        p.load(rule)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "rule 'r': its probe needs the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)" in msg, msg
    assert f"which this kernel ({os.uname().release}) lacks: BPF_MAP_CREATE: EINVAL" in msg, msg
    assert isinstance(exc.value.__cause__, ProbeError)
    assert isinstance(exc.value.__cause__.__cause__, KernelFeatureMissing)


def test_a_fallback_is_said_not_refused() -> None:
    p = Probed(Feature.PAGEMAP_SCAN, False, "the ioctl is refused (ENOTTY or EINVAL)")
    assert p.uses() == "/proc/PID/pagemap, 8 bytes read per page"
    assert p.line() == (
        "pagemap_scan: no (the ioctl is refused (ENOTTY or EINVAL)); "
        "using /proc/PID/pagemap, 8 bytes read per page"
    )
    kernel.require([Feature.PAGEMAP_SCAN], "gcore")  # has a fallback: never refused


def test_helper_numbers_match_the_uapi_header() -> None:
    """enum bpf_func_id is the order of __BPF_FUNC_MAPPER in include/uapi/linux/bpf.h."""
    import re

    header = Path("/usr/include/linux/bpf.h")
    if not header.exists():
        pytest.skip("no /usr/include/linux/bpf.h (linux-libc-dev)")
    names = re.findall(r"\bFN\((\w+)", header.read_text())
    for h in kernel.Helper:
        assert names.index(h.name.lower()) == h.value, h
    assert "BPF_MAP_TYPE_RINGBUF," in header.read_text()


@pytest.mark.kernel
@pytest.mark.lane
@pytest.mark.parametrize("fallback", [False, True], ids=["as-probed", "live-count"])
def test_targets_follow_a_thread_exit_and_the_process_exit(
    spawn: Callable[..., Victim], monkeypatch: pytest.MonkeyPatch, fallback: bool
) -> None:
    """The exit probe tells a thread's exit from the process's: with the tracepoint's group_dead
    field, or where the kernel has none (6.1) by the live-thread count the probe reads at the
    running kernel's BTF offsets. ``live-count`` builds that fallback on any kernel: where the
    headers are another kernel's (this VM's), offsets from them would read the wrong field."""
    import ctypes as ct
    import sys

    from snapd_testlib import wait_for

    if fallback:
        real = kernel.has
        monkeypatch.setattr(kernel, "has", lambda f: False if f is Feature.EXIT_GROUP_DEAD else real(f))

    script = (
        "import sys, threading\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "print('thread gone', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    v = spawn([sys.executable, "-c", script])
    text = f"name: ex\ntarget: {{pid: {v.pid}}}\ntrigger: {{syscall: getppid}}\n"
    rule, errors = parse_rule(text, "ex.yaml")
    assert rule is not None and not errors
    with Probes() as p:
        p.load(rule)
        tmap = p._bpf[b"targets"]

        def marked() -> bool:
            return tmap.get(ct.c_uint32(v.pid)) is not None

        assert marked()
        assert v.proc.stdin is not None and v.proc.stdout is not None
        v.proc.stdin.write(b"\n")
        v.proc.stdin.flush()
        assert v.proc.stdout.readline() == b"thread gone\n"
        assert marked(), "a thread's exit removed its process from the targets"
        v.kill()
        wait_for(lambda: not marked(), 10, "the exited process to leave the targets map")
