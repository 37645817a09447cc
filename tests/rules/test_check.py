"""`snapd check` as a user runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

GOOD = "target: {comm: nothing-here}\ntrigger: {syscall: write, when: errno == EPIPE}\n"
BAD = "target: {comm: x}\ntrigger: {syscall: write, count: 0}\naction: {stop: maybe}\n"


def run(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, "check", *args], capture_output=True, text=True, timeout=120)


def test_ok_and_errors(snapd_cmd: list[str], tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    r = run(snapd_cmd, "--no-load", str(good), str(bad))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{good}: ok",
        f"{bad}:2:34: trigger.count: 0 is out of range (1..1000000)",
        f"{bad}:3:16: action.stop: 'maybe' is not one of ptrace, kernel",
    ]
    assert "Traceback" not in r.stderr


def test_all_valid_exits_zero(snapd_cmd: list[str], tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = run(snapd_cmd, "--no-load", str(good))
    assert (r.returncode, r.stdout) == (0, f"{good}: ok\n")


def test_examples_directory(snapd_cmd: list[str]) -> None:
    rules = Path(__file__).parents[2] / "rules"
    r = run(snapd_cmd, "--no-load", str(rules))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": ok\n") == len(list(rules.glob("*.yaml")))


def test_missing_file_and_garbage(snapd_cmd: list[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\x00\xff\xfe binary")
    r = run(snapd_cmd, "--no-load", str(tmp_path / "nope.yaml"), str(junk))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0] == f"{tmp_path}/nope.yaml:1:1: cannot read: No such file or directory"
    assert lines[1].startswith(f"{junk}:1:")
    assert "Traceback" not in r.stderr


def test_usage(snapd_cmd: list[str]) -> None:
    assert run(snapd_cmd).returncode == 2
    assert run(snapd_cmd, "--bogus", "x").returncode == 2
    r = run(snapd_cmd, "--help")
    assert r.returncode == 0 and "usage: snapd check" in r.stdout


@pytest.mark.kernel
def test_root_checks_against_the_kernel_without_compiling(snapd_cmd: list[str], tmp_path: Path) -> None:
    """As root, a rule is checked against what arming it takes (its syscall numbers and
    tracepoints, its perf events), never by compiling BPF: with bcc made unimportable the
    check still runs, and it knows the names the 6.1-era C headers do not (sendfile, stat)."""
    import os
    import sys

    fake = tmp_path / "fakebcc" / "bcc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('snapd check must not load bcc')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    names = tmp_path / "names.yaml"
    calls = "sendfile, stat, fstat, lstat, uname, umount2"
    names.write_text(f"target: {{comm: x}}\ntrigger: {{syscall: [{calls}]}}\n")
    tick = tmp_path / "tick.yaml"
    tick.write_text("target: {comm: x}\ntrigger: {every: 1s}\n")
    r = subprocess.run(
        [sys.executable, "-m", "snapd", "check", str(good), str(names), str(tick)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert (r.returncode, r.stderr) == (0, ""), r.stdout + r.stderr
    assert r.stdout == f"{good}: ok\n{names}: ok\n{tick}: ok\n"


def test_unprivileged_checks_names_against_headers(tmp_path: Path) -> None:
    """As nobody, tracefs is unreadable: names are still checked (against asm/unistd_64.h)."""
    import os
    import shutil
    import sys

    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root to drop to nobody")
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # pytest's tmp_path is private to root
        os.chmod(d, 0o755)
        bad = Path(d) / "typo.yaml"
        bad.write_text("target: {comm: x}\ntrigger: {syscall: wrte}\n")
        bad.chmod(0o644)
        argv = ["runuser", "-u", "nobody", "--", sys.executable, "-m", "snapd", "check", str(bad)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 1, r.stderr
    assert r.stdout.startswith(f"{bad}:2:20: trigger.syscall: unknown syscall 'wrte'"), r.stdout + r.stderr
