"""Shared fixtures: kernel-test gating, C victims compiled once per session, process cleanup.

Kernel tests (marker ``kernel``) need root: unprivileged they skip with a reason, but with
``SNAPD_REQUIRE_KERNEL=1`` (set by .ci/run) a missing privilege is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapd_testlib import Victim, proc_state, thread_states, wait_for

__all__ = ["Victim", "proc_state", "thread_states", "wait_for"]  # also importable from here

VICTIMS = Path(__file__).parent / "victims"
REQUIRE_KERNEL = os.environ.get("SNAPD_REQUIRE_KERNEL") == "1"


_REPO = Path(__file__).resolve().parent.parent
_restore: list[tuple[Path, int]] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """Some tests run snapd as an unprivileged user (nobody, a snapd-group member), and that user
    must reach the checkout's .venv and src. A clone in a private directory (mktemp -d: 0700)
    would stop it at the parent, so as root we let others traverse (x only, no listing) every
    directory above the checkout for the session, and put the modes back at the end."""
    if os.geteuid() != 0:
        return
    d = _REPO
    while True:
        mode = d.stat().st_mode
        if not mode & 0o001:
            _restore.append((d, mode & 0o7777))
            d.chmod((mode & 0o7777) | 0o001)
        if d.parent == d:
            break
        d = d.parent


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for d, mode in reversed(_restore):
        with contextlib.suppress(OSError):
            d.chmod(mode)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 or REQUIRE_KERNEL:
        return  # as root they run; with REQUIRE_KERNEL unprivileged, _kernel_gate fails them
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root for ptrace/eBPF (run: sudo make test)"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With SNAPD_REQUIRE_KERNEL=1 (CI) a kernel test that skips, for whatever reason, fails:
    a skipped kernel test is a test that did not run."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_KERNEL and report.skipped and "kernel" in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"SNAPD_REQUIRE_KERNEL=1 but this kernel test was skipped: {reason}"


CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


@pytest.fixture
def kernel_core_pattern(tmp_path: Path) -> Iterator[Path]:
    """The kernel's own cores (kill -SEGV) written to a directory of this test: core_pattern is
    pointed at DIR/core.%p for the test and restored after. Targets need RLIMIT_CORE raised."""
    d = tmp_path / "kernel-cores"
    d.mkdir()
    d.chmod(0o1777)  # the kernel writes as the dumping process's fsuid
    before = CORE_PATTERN.read_text().rstrip("\n")
    CORE_PATTERN.write_text(f"{d}/core.%p\n")
    try:
        yield d
    finally:
        CORE_PATTERN.write_text(before + "\n")


@pytest.fixture(autouse=True)
def _kernel_gate(request: pytest.FixtureRequest) -> None:
    if "kernel" in request.keywords and os.geteuid() != 0 and REQUIRE_KERNEL:
        pytest.fail("SNAPD_REQUIRE_KERNEL=1 but not root: kernel tests cannot run")


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("victims")


@pytest.fixture(scope="session")
def compile_victim(build_dir: Path) -> Callable[..., Path]:
    """compile_victim("threads") builds tests/victims/threads.c with -g -O0 -pthread, once."""
    cache: dict[tuple[str, tuple[str, ...]], Path] = {}

    def build(name: str, *extra: str) -> Path:
        key = (name, extra)
        if key not in cache:
            src = VICTIMS / f"{name}.c"
            out = build_dir / (name + ("-" + "-".join(e.strip("-") for e in extra) if extra else ""))
            subprocess.run(
                ["gcc", "-g", "-O0", "-pthread", "-fno-omit-frame-pointer", "-o", str(out), str(src), *extra],
                check=True,
            )
            cache[key] = out
        return cache[key]

    return build


@pytest.fixture
def spawn() -> Iterator[Callable[..., Victim]]:
    """spawn([argv...]) starts a Victim; every one is killed (by pid) and reaped at teardown."""
    started: list[Victim] = []

    def start(argv: list[str], **kw: object) -> Victim:
        v = Victim([str(a) for a in argv], **kw)
        started.append(v)
        return v

    yield start
    for v in reversed(started):  # a tracer before its tracee: a traced zombie waits for it
        v.kill()


@pytest.fixture(scope="session")
def snapd_cmd() -> list[str]:
    """The installed console script (falls back to running the package)."""
    exe = shutil.which("snapd", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "snapd"]
