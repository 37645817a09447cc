"""The trigger storm, shared by tests/reliability/test_rel_storm.py (CI: ~10 s) and
bench/storm.py (long form): a victim calling getppid() as fast as it can, every call matching a
rule with max_cores 3; the daemon's CPU, RSS, cores and counters measured from /proc and `ctl`."""

from __future__ import annotations

import os
import selectors
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from support.daemon import DaemonHarness
from support.proc import Usage
from support.victims import Victim

MAX_CORES = 3


def rule_text(pid: int) -> str:
    return (
        f"name: storm\ntarget:\n  pid: {pid}\ntrigger:\n  syscall: getppid\n"
        f"limits:\n  max_cores: {MAX_CORES}\n  min_interval: 1ms\n"
    )


@dataclass
class StormResult:
    seconds: float
    calls: int
    rate: float
    cpu: float  # daemon CPU seconds during the storm and its drain
    wall: float
    rss_kib: list[int] = field(default_factory=list)  # sampled during the storm
    ctl_seconds: float = 0.0  # the slowest `snapd ctl status` during the storm
    before: Usage | None = None
    after: Usage | None = None
    status: dict[str, Any] = field(default_factory=dict)
    cores: int = 0
    entries: int = 0

    @property
    def cpu_share(self) -> float:
        return self.cpu / self.wall if self.wall else 0.0

    def summary(self) -> str:
        st = self.status
        p = st.get("probes", {})
        b = self.before or Usage(0.0, 0, 0, 0)
        a = self.after or Usage(0.0, 0, 0, 0)
        return (
            f"storm {self.seconds:.0f}s: {self.calls} matching calls ({self.rate / 1e3:.0f}k/s); "
            f"kernel fired {p.get('kernel_fired')} dropped {p.get('dropped')} muted "
            f"{p.get('kernel_muted')}; daemon read "
            f"{st.get('events')} events, suppressed {st.get('suppressed')}; cores {self.cores} "
            f"(entries {self.entries}, max_cores {MAX_CORES}); daemon CPU {self.cpu:.1f}s over "
            f"{self.wall:.1f}s ({self.cpu_share:.0%} of one CPU); RSS {b.rss_kib} -> {a.rss_kib} KiB "
            f"(max during {max(self.rss_kib, default=0)}); fds {b.fds} -> {a.fds}, "
            f"threads {b.threads} -> {a.threads}; slowest ctl status {self.ctl_seconds:.2f}s"
        )


def run_storm(daemon: DaemonHarness, victim: Victim, seconds: float) -> StormResult:
    """``daemon``: a started DaemonHarness with the storm rule on ``victim`` (a Victim of
    tests/victims/rel_storm.c). Returns the measurements."""
    pid = daemon.pid
    before = Usage.of(pid)
    t0 = time.monotonic()
    samples: list[int] = []
    stop = threading.Event()

    ctl_s: list[float] = []

    def sample() -> None:
        while not stop.wait(max(0.5, seconds / 10)):
            samples.append(Usage.of(pid).rss_kib)
            t = time.monotonic()
            daemon.status()  # the control socket answers in the middle of the storm
            ctl_s.append(time.monotonic() - t)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    assert victim.proc.stdin is not None and victim.proc.stdout is not None
    victim.proc.stdin.write(f"{seconds}\n".encode())
    victim.proc.stdin.flush()
    fd = victim.proc.stdout.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            assert sel.select(seconds + 60), "the storm victim did not finish"
            chunk = os.read(fd, 4096)
            assert chunk, "the storm victim exited"
            buf += chunk
    _, calls, rate = buf.split(b"\n")[0].decode().split()
    # Drain: the daemon reads what is left in the ring buffer; wait until its counters settle.
    last: dict[str, Any] = {}
    while True:
        st = daemon.status()
        if st["events"] == last.get("events") and st["dumping"] is None and st["queued"] == 0:
            break
        last = st
        time.sleep(0.5)
    stop.set()
    th.join()
    wall = time.monotonic() - t0
    after = Usage.of(pid)
    cores = daemon.cores("--rule", "storm")
    return StormResult(
        seconds=seconds,
        calls=int(calls),
        rate=float(rate),
        cpu=after.cpu - before.cpu,
        wall=wall,
        rss_kib=samples,
        ctl_seconds=max(ctl_s, default=0.0),
        before=before,
        after=after,
        status=st,
        cores=sum(1 for c in cores if c["status"] == "complete"),
        entries=len(cores),
    )
