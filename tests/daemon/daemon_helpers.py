"""Helpers for the daemon's end-to-end tests: a harness around the real `snapd daemon` process
and `snapd ctl`, and a line-oriented wrapper around tests/victims/daemon_victim.c."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Victim, wait_for

from snapd_testlib import scaled

READY_TIMEOUT = 60.0  # bcc compiles each rule's BPF program at load: seconds on a small VM


def halted_why(pid: int) -> str | None:
    """Why ``pid`` counts as halted (a thread in T/t, or a tracer attached), or None if it runs.

    A process that has exited is not halted."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("TracerPid:") and int(line.split()[1]) != 0:
            return f"traced by {line.split()[1]}"
    for tid in tids:
        try:
            data = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
        except FileNotFoundError:
            continue
        state = data[data.rindex(b")") + 2 :].split()[0].decode()
        if state in ("T", "t"):
            return f"thread {tid} in state {state}"
        if state == "Z" and tid == str(pid):
            return None
    return None


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
        stdin = self.victim.proc.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()

    def reply(self, timeout: float = 15.0) -> str:
        timeout = scaled(timeout)
        stdout = self.victim.proc.stdout
        assert stdout is not None
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
                    raise AssertionError(f"victim {self.pid} exited")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def cmd(self, line: str, timeout: float = 15.0) -> str:
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

    def start(self, *extra: str, ready_timeout: float = READY_TIMEOUT) -> None:
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
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                # The socket exists before the rules are loaded; the daemon answers once its
                # loop runs (BPF compiles can take seconds on a loaded machine).
                return self.ctl("status", check=False, timeout=10).returncode == 0
            except subprocess.TimeoutExpired:
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
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                raise AssertionError(f"the daemon ignored SIGTERM for {timeout}s") from None
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
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"snapd ctl {' '.join(args)}: exit {r.returncode}: {r.stderr}{r.stdout}")
        return r

    def status(self) -> dict[str, Any]:
        return json.loads(self.ctl("status", "--json").stdout)  # type: ignore[no-any-return]

    def rules_list(self) -> list[dict[str, Any]]:
        return json.loads(self.ctl("rules", "--json").stdout)  # type: ignore[no-any-return]

    def rule(self, name: str) -> dict[str, Any]:
        for r in self.rules_list():
            if r.get("name") == name:
                return r
        raise AssertionError(f"rule {name} not loaded: {self.rules_list()}")

    def cores(self, *args: str) -> list[dict[str, Any]]:
        # Exit status 1 with "[]" when there are none.
        r = self.ctl("list-cores", "--json", "--all", *args, check=False)  # failed ones too
        assert r.returncode in (0, 1), r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

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


def gdb_bt(exe: Path | str, core: str) -> str:
    r = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "bt", str(exe), core],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return r.stdout + r.stderr


def clock_rule(pid: int) -> str:
    """A 100 ms timer rule for ``pid`` whose active window never includes now: it takes no core,
    and its suppressed ("inactive") firings count the time the daemon has seen."""
    now = dt.datetime.now()
    a, b = now + dt.timedelta(hours=2), now + dt.timedelta(hours=3)
    return f'name: clock\ntarget:\n  pid: {pid}\ntrigger:\n  every: 100ms\nactive: "{a:%H:%M}-{b:%H:%M}"\n'
