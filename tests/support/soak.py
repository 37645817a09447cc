"""The soak, shared by tests/reliability/test_rel_soak.py (CI: ~60 s) and bench/soak.py (long
form, 30 min): rules firing every few seconds (an `every` timer with an action.run, a syscall
rule held back by min_interval), retention deleting cores all along, `snapd ctl` traffic; the
daemon's fds, threads and RSS read from /proc after a warm-up and at the end."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

from snapd.ctl.protocol import CtlError
from support.daemon import DaemonHarness, DVictim
from support.proc import Usage, children_of
from support.waiting import scaled, wait_for

WARMUP_S = 10.0


def rules(pid: int) -> dict[str, str]:
    return {
        "tick.yaml": (
            f"name: soak-tick\ntarget:\n  pid: {pid}\ntrigger:\n  every: 2s\n"
            'action:\n  run: ["/bin/true", "{core}", "{rule}", "{pid}"]\n'
            "limits:\n  max_cores: 10000\n  min_interval: 1ms\n"
        ),
        "sys.yaml": (
            f"name: soak-sys\ntarget:\n  pid: {pid}\ntrigger:\n  syscall: getppid\n"
            "action:\n  snapshot: fork\n"
            "limits:\n  max_cores: 10000\n  min_interval: 3s\n"
        ),
    }


DAEMON_ARGS = ("--cores-per-hour", "1000000", "--max-use", "24M", "--keep-free", "0")


@dataclass
class SoakResult:
    seconds: float
    start: Usage
    end: Usage
    rss_series: list[int] = field(default_factory=list)  # KiB, one per sample
    status: dict[str, Any] = field(default_factory=dict)
    ctl_calls: int = 0
    ctl_errors: list[str] = field(default_factory=list)
    listed: int = 0
    #: what each fd of the daemon pointed at, at rest, after the warm-up and at the end
    start_fds: dict[str, str] = field(default_factory=dict)
    end_fds: dict[str, str] = field(default_factory=dict)

    @property
    def rss_growth_kib(self) -> int:
        return self.end.rss_kib - self.start.rss_kib

    def summary(self) -> str:
        st = self.status
        return (
            f"soak {self.seconds:.0f}s (measured after a {WARMUP_S:.0f}s warm-up): cores {st.get('cores')} "
            f"failed {st.get('failed')} events {st.get('events')} suppressed {st.get('suppressed')}; "
            f"{self.ctl_calls} ctl calls ({len(self.ctl_errors)} failed {self.ctl_errors[:2]}); "
            f"cores listed at the end {self.listed}; "
            f"fds {self.start.fds} -> {self.end.fds}; threads {self.start.threads} -> {self.end.threads}; "
            f"RSS {self.start.rss_kib} -> {self.end.rss_kib} KiB ({self.rss_growth_kib:+d}); "
            f"CPU {self.end.cpu - self.start.cpu:.1f}s; RSS series {self.rss_series}"
            f"{self.fd_changes()}"
        )

    def fd_changes(self) -> str:
        gone = {fd: t for fd, t in self.start_fds.items() if self.end_fds.get(fd) != t}
        new = {fd: t for fd, t in self.end_fds.items() if self.start_fds.get(fd) != t}
        return f"; fds closed {gone}, opened {new}" if gone or new else ""


def run_soak(daemon: DaemonHarness, victim: DVictim, seconds: float, sample_every: float = 5.0) -> SoakResult:
    """``daemon``: a started DaemonHarness with :func:`rules` on ``victim`` (a DVictim of
    tests/victims/daemon_victim.c), which already runs a getppid thread ("l 500000")."""
    t0 = time.monotonic()
    ctl_calls = 0
    ctl_errors: list[str] = []
    while time.monotonic() - t0 < WARMUP_S:
        daemon.cores()
        ctl_calls += 1
        time.sleep(1)
    start, start_fds = at_rest(daemon)
    series = [start.rss_kib]
    t1 = time.monotonic()
    next_sample = t1 + sample_every
    while time.monotonic() - t1 < seconds:
        try:
            daemon.cores()
            daemon.status()
        except (AssertionError, ValueError, CtlError) as err:  # counted and reported, not fatal here
            ctl_errors.append(str(err)[:200])
        ctl_calls += 2
        if time.monotonic() >= next_sample:
            series.append(Usage.of(daemon.pid).rss_kib)
            next_sample += sample_every
        time.sleep(0.5)
        victim.cmd("p")  # the target runs all along
    end, end_fds = at_rest(daemon)
    series.append(end.rss_kib)
    return SoakResult(
        seconds=time.monotonic() - t1,
        start=start,
        end=end,
        rss_series=series,
        status=daemon.status(),
        ctl_calls=ctl_calls,
        ctl_errors=ctl_errors,
        listed=len(daemon.cores()),
        start_fds=start_fds,
        end_fds=end_fds,
    )


def fd_targets(pid: int) -> dict[str, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return out


def at_rest(daemon: DaemonHarness) -> tuple[Usage, dict[str, str]]:
    """The daemon's usage with nothing in flight: paused (no new dump), then :func:`quiet`;
    resumed after. Rules fire about once a second and a report on a loaded machine can take
    longer than that, so without the pause a moment of rest may never come."""
    daemon.ctl("pause", "--reason", "soak: measuring at rest")
    try:
        quiet(daemon)
        # The daemon closes a control connection when it reads the client's EOF, at its next
        # loop turn: the status call quiet() just made may still hold an fd.
        wait_for(lambda: not ctl_connections(daemon), 30, "the daemon to close its control connections")
        fds = steady_fds(daemon.pid)
        return Usage.of(daemon.pid), described(fds)
    finally:
        daemon.ctl("resume")


def steady_fds(pid: int, timeout: float = 30.0, gap: float = 0.25) -> dict[str, str]:
    """The daemon's fds once two reads ``gap`` apart agree: at rest by every sign quiet() reads,
    a daemon may still hold an fd for a moment (seen: a socket open at one measurement and not
    the other, in runs with a CPU kept busy); a leak stays, a moment passes. The last read if
    they never agree (the caller's comparison then shows the difference)."""
    end = time.monotonic() + scaled(timeout)
    before = fd_targets(pid)
    while time.monotonic() < end:
        time.sleep(gap)
        now = fd_targets(pid)
        if now == before:
            return now
        before = now
    return before


def described(fds: dict[str, str]) -> dict[str, str]:
    """``fds`` with each socket's line of /proc/net (protocol, address, state): what it was is
    gone by the time a failure is read."""
    lines = socket_lines()
    out = {}
    for fd, target in fds.items():
        if target.startswith("socket:[") and target.endswith("]"):
            target = f"{target} {lines.get(int(target[8:-1]), '(not in /proc/net)')}"
        out[fd] = target
    return out


def socket_lines() -> dict[int, str]:
    """Socket inode -> a short description, from /proc/net/{unix,netlink,tcp,tcp6,udp,udp6}
    (the inode column: net/unix/af_unix.c unix_seq_show, net/netlink/af_netlink.c, net/ipv4)."""
    out: dict[int, str] = {}
    for proto, col in (("unix", 6), ("netlink", 9), ("tcp", 9), ("tcp6", 9), ("udp", 9), ("udp6", 9)):
        with contextlib.suppress(OSError), open(f"/proc/net/{proto}") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) > col and cols[col].isdigit():
                    if proto == "unix":  # state, then the path (none for a socketpair)
                        what = " ".join([f"st={cols[5]}", *cols[7:]])
                    elif proto == "netlink":  # protocol, port id
                        what = f"proto={cols[1]} portid={cols[2]}"
                    else:  # local, remote, state
                        what = " ".join(cols[1:4])
                    out[int(cols[col])] = f"{proto} {what}"
    return out


def ctl_connections(daemon: DaemonHarness) -> set[int]:
    """Inodes of the daemon's accepted control-socket connections: in /proc/net/unix an
    accepted socket carries its listener's path, and is SS_CONNECTED (state 03) where the
    listener is SS_UNCONNECTED (01) (net/unix/af_unix.c unix_seq_show)."""
    connected = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            cols = line.split()
            if len(cols) >= 8 and cols[7] == daemon.socket and cols[5] == "03":
                connected.add(int(cols[6]))
    mine = {int(t[8:-1]) for t in fd_targets(daemon.pid).values() if t.startswith("socket:[")}
    return connected & mine


def quiet(daemon: DaemonHarness, timeout: float = 60.0) -> None:
    """No dump or report running or queued and no action.run thread alive, so that fds and
    threads are counted at rest (a dump holds its core file, a report its worker's pipes)."""
    end = time.monotonic() + scaled(timeout)
    st: dict[str, Any] = {}
    while time.monotonic() < end:
        st = daemon.status()
        reports = st.get("reports") or {}
        if (
            st["dumping"] is None
            and st["queued"] == 0
            and not reports.get("running")
            and not reports.get("queued")
            and Usage.of(daemon.pid).threads <= 2
            # no job child (a binaries capture, compression, action.run) holding its pipes
            and set(children_of(daemon.pid)) <= {st.get("dumper")}
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"the daemon never came to rest: {st}")
