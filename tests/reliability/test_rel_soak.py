"""Fault 6: a long run. Rules fire every few seconds for ~60 s (bench/soak.py: 30 min): the
daemon's open fds and threads are the same at the end as after the warm-up, and its RSS does
not grow (measured from /proc)."""

from __future__ import annotations

import os

import pytest

from support.daemon import DaemonHarness, Victims
from support.proc import halted_why
from support.soak import DAEMON_ARGS, rules, run_soak
from support.statedir import check_listing, integrity, partials
from support.waiting import wait_for

pytestmark = pytest.mark.kernel

SECONDS = float(os.environ.get("SNAPD_SOAK_SECONDS", "50"))


def test_soak(daemon: DaemonHarness, victims: Victims) -> None:
    v = victims(4)
    v.cmd("l 500000")  # a thread calling getppid() twice a second
    for name, text in rules(v.pid).items():
        daemon.write_rule(name, text)
    daemon.start(*DAEMON_ARGS)
    assert daemon.status()["rules"] == 2, daemon.log_text()
    r = run_soak(daemon, v, SECONDS)
    print("\n" + r.summary())
    assert r.status["cores"] >= SECONDS / 3, r.summary()  # it did keep firing
    assert not r.ctl_errors, r.summary()
    assert r.end.fds == r.start.fds, r.summary()
    assert r.end.threads == r.start.threads, r.summary()
    assert r.rss_growth_kib < 4096, r.summary()
    assert halted_why(v.pid) is None
    cores = daemon.state / "cores"
    # Still firing, retention would remove the oldest core between the listing and its stat.
    daemon.ctl("pause")
    wait_for(daemon.idle, 60, "the daemon to be idle")
    check_listing(daemon.cores(), cores)
    assert not partials(cores)
    assert integrity(daemon.state / "catalog.db") == "ok"
    assert daemon.proc is not None and daemon.proc.poll() is None
