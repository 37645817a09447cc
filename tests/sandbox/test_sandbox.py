"""snapd.sandbox: the bounded, confined child, on the real kernel (rlimits, setuid, Landlock)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from snapd.sandbox import Failure, Limits, Result, landlock, run_bounded

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _job_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{HERE}:{os.environ.get('PYTHONPATH', '')}".rstrip(":"))


def run(what: str, limits: Limits | None = None, **args: object) -> Result | Failure:
    return run_bounded("sbx_job", {"what": what, **args}, limits or Limits(deadline=60))


def test_value_round_trip():
    res = run("echo", value={"a": [1, "é", None]})
    assert isinstance(res, Result) and res.value == {"a": [1, "é", None]}
    assert res.max_rss > 0 and res.elapsed > 0


@pytest.mark.kernel
def test_confinement_as_root(tmp_path):
    secret = tmp_path / "core"
    secret.write_bytes(b"\x7fELF core")
    secret.chmod(0o600)
    fd = os.open(secret, os.O_RDONLY)
    try:
        plain = run_bounded("sbx_job", {"what": "probe", "fd": fd, "tmp": "/tmp"}, Limits(), fds=[fd])
        capped = run_bounded(
            "sbx_job", {"what": "probe", "fd": fd, "tmp": "/tmp"}, Limits(keep_read_cap=True), fds=[fd]
        )
    finally:
        os.close(fd)
    assert isinstance(plain, Result) and isinstance(capped, Result), (plain, capped)
    for res in (plain, capped):
        v = res.value
        assert v["uid"] == 65534 and v["groups"] == [] and v["no_new_privs"] == "1"
        assert v["nice"] == 19
        assert v["shadow"] == "Permission denied"
        assert v["usr"] == "ok"
        assert v["pread"] == 4  # the inherited fd
        assert v["kill_parent"] == "Operation not permitted"
        if landlock.abi():
            assert v["write_tmp"] == "Permission denied"  # /tmp is writable by nobody: Landlock
    assert plain.value["cap_eff"] == "0000000000000000"
    assert plain.value["reopen"] == "Permission denied"
    if landlock.abi():
        assert capped.value["cap_eff"] == "0000000000000004"  # CAP_DAC_READ_SEARCH alone
        assert capped.value["reopen"] == "ok"  # the one file Landlock lets it open
        assert "landlock ABI" in capped.sandbox
    assert not Path("/tmp/written").exists()


@pytest.mark.parametrize(
    ("what", "limits", "why"),
    [
        ("spin", Limits(cpu_seconds=1, deadline=60), "the worker reached its CPU limit of 1 s"),
        ("sleep", Limits(deadline=0.5), "timed out after 0.5 s (killed)"),
        ("eat", Limits(address_space=256 << 20, deadline=60), "out of memory (address space limit 256 MiB)"),
        ("segv", Limits(deadline=60), "the worker crashed (SIGSEGV)"),
        ("big", Limits(output_bytes=1 << 20, deadline=60), "output over 1048576 bytes (killed)"),
        ("raise", Limits(deadline=60), "ValueError: bad thing"),
    ],
)
def test_failures_are_one_line(what, limits, why):
    t0 = time.monotonic()
    res = run(what, limits)
    assert isinstance(res, Failure), res
    assert res.why.startswith(why), res.why
    assert "\n" not in res.why
    assert time.monotonic() - t0 < limits.deadline + 10
    assert res.timed_out == (what == "sleep")


def test_the_whole_process_group_is_killed():
    res = run("fork-and-hang", Limits(deadline=1))
    assert isinstance(res, Failure) and res.timed_out


def test_a_missing_module_is_a_failure():
    res = run_bounded("snapd.no_such_module", {}, Limits(deadline=30))
    assert isinstance(res, Failure) and "ModuleNotFoundError" in res.why


def test_arguments_sent_after_the_start():
    from snapd.sandbox import BoundedRun

    run = BoundedRun("sbx_job", None, Limits(deadline=60), defer=True)
    assert run.step(0.05) is None  # waiting for its arguments, within the deadline
    run.send({"what": "echo", "value": "x" * (1 << 20)})  # more than a pipe buffer
    res = None
    while res is None:
        res = run.step(1.0)
    assert isinstance(res, Result) and res.value == "x" * (1 << 20)
