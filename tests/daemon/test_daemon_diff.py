"""`snapd ctl diff` and `snapd ctl series` through the real daemon: two cores of one process
compared with what the catalog knows (the fds), a repeat: 3 firing as a trend, and cores of two
processes refused in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.daemon import DaemonHarness, syscall_rule
from support.victims import Victim, ask
from support.waiting import scaled, wait_for

pytestmark = pytest.mark.kernel

MiB = 1 << 20


def snap(daemon: DaemonHarness, pid: int) -> int:
    return int(json.loads(daemon.ctl("snap", str(pid), "--json").stdout)["id"])


def diff_json(daemon: DaemonHarness, *args: str) -> dict[str, Any]:
    return json.loads(daemon.ctl("diff", *args, "--json", timeout=scaled(300)).stdout)  # type: ignore[no-any-return]


def test_ctl_diff_of_two_cores_of_the_diff_victim(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path]
) -> None:
    v = spawn([compile_victim("diff_victim"), "32"])
    buf = int(v.ready_line.split()[1], 16)
    daemon.start()
    a = snap(daemon, v.pid)
    ask(v, "w 1000")  # rewrite 1000 pages of the buffer
    ask(v, "h 64")  # 64 MiB more on the heap
    fd = int(ask(v, "o /etc/hostname"))
    tid = int(ask(v, "t"))
    b = snap(daemon, v.pid)

    d = diff_json(daemon, str(a), str(b))
    assert d["a"]["id"] == a and d["b"]["id"] == b and d["a"]["pid"] == d["b"]["pid"] == v.pid
    heap = d["summary"]["by_class"]["heap"]
    assert 64 * MiB <= heap["delta"] <= 68 * MiB, heap  # a few MiB of allocator overhead at most
    assert 64 * MiB <= d["summary"]["resident_delta"] <= 70 * MiB
    m = next(x for x in d["mappings"] if x["start"] <= buf < x["end"])
    assert (m["class"], m["status"]) == ("anon", "same")
    assert 1000 <= m["changed_pages"] <= 1010, m
    assert d["threads"]["added"] == [tid] and d["threads"]["removed"] == []
    assert {"fd": fd, "target": "/etc/hostname"} in d["fds"]["opened"]
    assert "text" not in d

    text = daemon.ctl("diff", str(a), str(b), timeout=scaled(300)).stdout
    lines = text.splitlines()
    assert lines[0] == f"diff of core {a} and core {b}"
    summary = next(x for x in lines if x.startswith("summary: "))
    assert summary.startswith("summary: heap +64."), summary
    assert "1 thread added" in summary and "1 fd opened: /etc/hostname" in summary
    assert f"pages changed in [anon {buf:x}]" in summary


def test_ctl_diff_refuses_two_processes_in_one_line(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path]
) -> None:
    exe = compile_victim("diff_victim")
    v1, v2 = spawn([exe, "1"]), spawn([exe, "1"])
    daemon.start()
    a, b = snap(daemon, v1.pid), snap(daemon, v2.pid)
    for args in ((str(a), str(b)), (str(a), str(b), "--json")):
        r = daemon.ctl("diff", *args, check=False)
        assert r.returncode == 1 and r.stdout == "", r
        (line,) = r.stderr.splitlines()
        assert f"core {a} and core {b} are of different processes (pid {v1.pid} ({exe.name})" in line, line
        assert "Traceback" not in r.stderr
    r = daemon.ctl("diff", str(a), "999", check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "999" in r.stderr, r
    r = daemon.ctl("series", str(a), check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "only core" in r.stderr, r


def test_ctl_series_of_a_repeat_firing(
    daemon: DaemonHarness, spawn: Callable[..., Victim], compile_victim: Callable[..., Path]
) -> None:
    v = spawn([compile_victim("mr_threads")])
    pid = int(v.ready_line.split()[1])
    action = "  core:\n    repeat: 3\n    interval: 300ms\n"
    daemon.write_rule("rep.yaml", syscall_rule("mr-series", pid, "getppid", action=action))
    daemon.start()
    v.write(b"f\n")  # one firing, three cores
    cores = wait_for(
        lambda: len(daemon.complete("mr-series")) == 3 and daemon.complete("mr-series"), 30, "3 cores"
    )
    assert isinstance(cores, list)
    ids = sorted(c["id"] for c in cores)
    s = json.loads(daemon.ctl("series", str(ids[1]), "--json", timeout=scaled(300)).stdout)
    assert s["kind"] == "firing" and s["ids"] == ids
    rows = s["rows"]
    assert [r["label"] for r in rows] == [str(i) for i in ids]
    assert all(r["pid"] == pid and r["threads"] == 4 and r["fds"] is not None for r in rows)
    assert rows[0]["resident_delta"] is None and all(r["resident_delta"] is not None for r in rows[1:])
    assert all(r["error"] == "" for r in rows)
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)

    text = daemon.ctl("series", str(ids[0]), timeout=scaled(300)).stdout.splitlines()
    assert text[0] == f"series: cores {', '.join(map(str, ids))}, of one firing (a repeat series)"
    assert text[1].split()[:3] == ["CORE", "TIME", "TOTAL"]
    assert [x.split()[0] for x in text[2:5]] == [str(i) for i in ids]
    assert f"  {ids[0]} -> {ids[1]}: " in "\n".join(text)
    # a second firing of the same rule and pid is a series of its own
    v.write(b"f\n")
    wait_for(lambda: len(daemon.complete("mr-series")) == 6, 30, "3 more cores")
    later = sorted(c["id"] for c in daemon.complete("mr-series"))[3:]
    assert json.loads(daemon.ctl("series", str(ids[2]), "--json", timeout=scaled(300)).stdout)["ids"] == ids
    assert (
        json.loads(daemon.ctl("series", str(later[0]), "--json", timeout=scaled(300)).stdout)["ids"] == later
    )
