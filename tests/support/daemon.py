"""The real daemon, driven as a user would: a harness around the `snapd daemon` process and
`snapd ctl`, rule files, and a line-oriented wrapper around tests/victims/daemon_victim.c."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from snapd.ctl.client import Client
from snapd.ctl.protocol import CtlError
from support.proc import halted_why
from support.victims import Victim
from support.waiting import MIN_WAIT_S, scaled, wait_for

READY_TIMEOUT = scaled(60.0)  # bcc compiles each rule's BPF program at load: seconds on a small VM


class DVictim:
    """tests/victims/daemon_victim.c: ``cmd("g 1")`` -> ``"done g 0"`` (see the C file)."""

    def __init__(self, victim: Victim, exe: Path) -> None:
        self.victim = victim
        self.pid = victim.pid
        self.exe = exe
        self.comm = exe.name[:15]
        self._buf = b""

    def alive(self) -> bool:
        return self.victim.alive()

    def send(self, line: str) -> None:
        self.victim.write(line.encode() + b"\n")

    def reply(self, timeout: float = MIN_WAIT_S) -> str:
        stdout = self.victim.proc.stdout
        assert stdout is not None
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    why = halted_why(self.pid) or "running"
                    raise AssertionError(f"victim {self.pid} did not answer in {timeout}s ({why})")
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"victim {self.pid} is gone ({self.victim.exit_status()})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def cmd(self, line: str, timeout: float = MIN_WAIT_S) -> str:
        """Send a command and wait for its ``done`` line: the victim ran it and runs on."""
        self.send(line)
        out = self.reply(timeout)
        assert out.startswith(f"done {line[0]}"), out
        return out


class Victims:
    """victims() starts tests/victims/daemon_victim.c (optionally touching MiB of memory)."""

    def __init__(self, spawn: Callable[..., Victim], exe: Path) -> None:
        self.spawn = spawn
        self.exe = exe
        self.started: list[DVictim] = []

    def __call__(self, touch_mib: int = 0) -> DVictim:
        argv = [str(self.exe)] + ([str(touch_mib)] if touch_mib else [])
        v = DVictim(self.spawn(argv), self.exe)
        self.started.append(v)
        return v


class DaemonHarness:
    """The real daemon: ``start()``, ``ctl(...)``, rule files, ``stop()`` / ``kill9()``."""

    def __init__(self, snapd_cmd: list[str], rules: Path, state: Path, socket: str, logdir: Path) -> None:
        self.snapd_cmd = snapd_cmd
        self.rules = rules
        self.state = state
        self.socket = socket
        self.log_path = logdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: tuple[str, ...] = ()

    # --- process ------------------------------------------------------------------------------

    def start(self, *extra: str, ready_timeout: float = READY_TIMEOUT, wait: bool = True) -> None:
        assert self.proc is None, "already running"
        self.extra = extra or self.extra
        with open(self.log_path, "ab") as log:
            log.write(b"--- start\n")
            self.proc = subprocess.Popen(
                [
                    *self.snapd_cmd,
                    "daemon",
                    "--rules",
                    str(self.rules),
                    "--state",
                    str(self.state),
                    "--socket",
                    self.socket,
                    *self.extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        if wait:
            self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                # The daemon answers while its probes compile (seconds on a loaded machine),
                # with state "starting"; "ready" once every rule is armed.
                return bool(self.call("status", timeout=10).get("state", "ready") == "ready")
            except CtlError:
                return False

        wait_for(ready, timeout, "the daemon to answer `snapd ctl status`")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs; returns the exit status (None if not running)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                raise AssertionError(f"the daemon ignored SIGTERM for {scaled(timeout)}s") from None
        return proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- ctl ----------------------------------------------------------------------------------

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "SNAPD_SOCKET"}
        r = subprocess.run(
            [*self.snapd_cmd, "ctl", "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=scaled(timeout),
            env=env,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"snapd ctl {' '.join(args)}: exit {r.returncode}: {r.stderr}{r.stdout}")
        return r

    def call(self, cmd: str, *, timeout: float = 60, **args: Any) -> Any:
        """One request over the control socket, made from this process. The queries the tests
        poll go this way, not through ``snapd ctl`` (which the ctl tests run): a new Python
        process per poll keeps a CPU busy, taken from the daemon under test, which on an
        emulated guest (the kernel lane) made each daemon start minutes longer."""
        with Client(self.socket, timeout=scaled(timeout)) as c:
            return c.call(cmd, **args)

    def status(self) -> dict[str, Any]:
        return self.call("status")  # type: ignore[no-any-return]

    def rules_list(self) -> list[dict[str, Any]]:
        return self.call("rules")  # type: ignore[no-any-return]

    def rule(self, name: str) -> dict[str, Any]:
        for r in self.rules_list():
            if r.get("name") == name:
                return r
        raise AssertionError(f"rule {name} not loaded: {self.rules_list()}")

    def cores(self, *args: str) -> list[dict[str, Any]]:
        """``snapd ctl list-cores --all [--rule R] [--pid N]``: failed attempts too."""
        opts = dict(zip(args[::2], args[1::2], strict=True))
        assert set(opts) <= {"--rule", "--pid"}, args
        pid = int(opts["--pid"]) if "--pid" in opts else None
        return self.call("list-cores", rule=opts.get("--rule"), pid=pid, since=None, all=True)  # type: ignore[no-any-return]

    def complete(self, rule: str) -> list[dict[str, Any]]:
        return [c for c in self.cores("--rule", rule) if c["status"] == "complete"]

    def idle(self) -> bool:
        """No dump running or queued."""
        st = self.status()
        return st["dumping"] is None and st["queued"] == 0

    # --- rule files ---------------------------------------------------------------------------

    def write_rule(self, name: str, text: str, *, mode: int = 0o644, uid: int = 0) -> Path:
        """Publish a rule file atomically (a dot-file, which the daemon ignores, renamed)."""
        path = self.rules / name
        tmp = self.rules / f".{name}.tmp"
        tmp.write_text(text)
        os.chown(tmp, uid, 0)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
        return path

    def remove_rule(self, name: str) -> None:
        (self.rules / name).unlink()


def syscall_rule(
    name: str,
    pid: int,
    syscall: str = "getppid",
    *,
    when: str | None = None,
    action: str = "",
    limits: str = "  max_cores: 100\n  min_interval: 1ms\n",
    extra: str = "",
) -> str:
    """YAML for a rule on one pid; ``action``/``limits``/``extra`` are raw YAML lines."""
    text = f"name: {name}\ntarget:\n  pid: {pid}\ntrigger:\n  syscall: {syscall}\n"
    if when:
        text += f"  when: {when}\n"
    if action:
        text += "action:\n" + action
    if limits:
        text += "limits:\n" + limits
    return text + extra


def clock_rule(pid: int) -> str:
    """A 100 ms timer rule for ``pid`` whose active window never includes now: it takes no core,
    and its suppressed ("inactive") firings count the time the daemon has seen."""
    now = dt.datetime.now()
    a, b = now + dt.timedelta(hours=2), now + dt.timedelta(hours=3)
    return f'name: clock\ntarget:\n  pid: {pid}\ntrigger:\n  every: 100ms\nactive: "{a:%H:%M}-{b:%H:%M}"\n'


@contextlib.contextmanager
def daemon_and_victims() -> Iterator[tuple[DaemonHarness, Path, list[Victim]]]:
    """The fixtures' harness outside pytest (bench/): (harness, work dir, started victims) on
    temp dirs; the daemon is stopped and the victims killed (by pid) on exit."""
    work = Path(tempfile.mkdtemp(prefix="snapd-bench-", dir="/tmp"))
    os.chmod(work, 0o755)
    rules = work / "rules.d"
    rules.mkdir()
    snapd = shutil.which("snapd", path=str(Path(sys.executable).parent))
    cmd = [snapd] if snapd else [sys.executable, "-m", "snapd"]
    h = DaemonHarness(cmd, rules, work / "state", str(work / "ctl.sock"), work)
    started: list[Victim] = []
    try:
        yield h, work, started
    finally:
        h.stop()
        for v in reversed(started):
            v.kill()
        shutil.rmtree(work, ignore_errors=True)


class NamedVictims:
    """``NamedVictims(spawn, victim_exe)("trust-rss")``: daemon_victim.c run as that comm."""

    def __init__(self, spawn: Callable[..., Victim], exe: Path) -> None:
        self.spawn = spawn
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="snapd-tv-", dir="/tmp"))
        self.dir.chmod(0o755)

    def __call__(self, name: str, touch_mib: int = 0) -> DVictim:
        exe = self.dir / name[:15]
        if not exe.exists():
            shutil.copy(self.exe, exe)
        argv = [str(exe)] + ([str(touch_mib)] if touch_mib else [])
        return DVictim(self.spawn(argv), exe)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
