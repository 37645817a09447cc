"""diff_context() on /proc contexts shaped as snapd.procfs.context.capture() makes them (no root)."""

from __future__ import annotations

from typing import Any

import pytest

from snapd.diff import DifferentProcesses, diff_context
from snapd.diff.stacks import changed_threads


def ctx(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pid": 10,
        "status": {"VmRSS": "1000 kB", "Threads": "2", "VmSize": "5000 kB"},
        "cgroup": "/system.slice/app.service",
        "limits": [
            {"name": "Max open files", "soft": "1024", "hard": "4096", "units": "files"},
            {"name": "Max core file size", "soft": "0", "hard": "unlimited", "units": "bytes"},
        ],
        "fds": [{"fd": 0, "target": "/dev/null"}, {"fd": 3, "target": "socket:[100]"}],
        "fds_total": 2,
        "threads": [{"tid": 10}, {"tid": 11}],
        "threads_total": 2,
        "errors": {},
    }
    base.update(over)
    return base


def test_fds_limits_cgroup_status() -> None:
    b = ctx(
        fds=[
            {"fd": 0, "target": "/dev/null"},
            {"fd": 3, "target": "socket:[200]"},  # closed and reopened: both
            {"fd": 4, "target": "/etc/hostname"},
        ],
        fds_total=3,
        limits=[
            {"name": "Max open files", "soft": "2048", "hard": "4096", "units": "files"},
            {"name": "Max core file size", "soft": "0", "hard": "unlimited", "units": "bytes"},
        ],
        cgroup="/system.slice/other.service",
        status={"VmRSS": "66536 kB", "Threads": "3", "VmSize": "5000 kB"},
    )
    d = diff_context(ctx(), b)
    assert d.opened == [{"fd": 3, "target": "socket:[200]"}, {"fd": 4, "target": "/etc/hostname"}]
    assert d.closed == [{"fd": 3, "target": "socket:[100]"}]
    assert (d.fds_a, d.fds_b) == (2, 3)
    assert [lim["name"] for lim in d.limits] == ["Max open files"]
    assert d.limits[0]["a"]["soft"] == "1024" and d.limits[0]["b"]["soft"] == "2048"
    assert d.cgroup == {"a": "/system.slice/app.service", "b": "/system.slice/other.service"}
    assert d.status == {
        "VmRSS": {"a": 1000, "b": 66536, "delta": 65536},
        "Threads": {"a": 2, "b": 3, "delta": 1},
    }
    assert d.incomplete == []


def test_same_context_is_no_change() -> None:
    d = diff_context(ctx(), ctx())
    assert not (d.opened or d.closed or d.limits or d.cgroup or d.status)


def test_hostile_shapes_are_skipped() -> None:
    b = ctx(fds=[{"fd": "4", "target": 1}, "junk", {"fd": 5, "target": "/tmp/x\x1b[2J"}], limits="no",
            status=["x"], cgroup=3, threads_total=True)  # fmt: skip
    d = diff_context(ctx(), b)
    assert d.opened == [{"fd": 5, "target": "/tmp/x\x1b[2J"}]  # kept as data; rendering escapes it
    assert d.limits == [] and d.cgroup is None and d.status == {}


def test_truncated_fd_lists_are_said() -> None:
    d = diff_context(ctx(), ctx(fds_total=9000, errors={}))
    assert d.incomplete == ["b: 2 of 9000 fds recorded"]


def test_contexts_of_two_processes_are_refused() -> None:
    with pytest.raises(DifferentProcesses, match="pid 10 and pid 11"):
        diff_context(ctx(), ctx(pid=11))


def test_changed_threads_by_top_frames() -> None:
    a = {"threads": [{"tid": 1, "frames": [{"pc": 16, "module": "/lib/libc.so.6", "offset": 32}]},
                     {"tid": 2, "frames": [{"pc": 16}]}, {"tid": 3, "frames": []}]}  # fmt: skip
    b = {"threads": [{"tid": 1, "frames": [{"pc": 99, "module": "/lib/libc.so.6", "offset": 32}]},
                     {"tid": 2, "frames": [{"pc": 17}]}, {"tid": 4, "frames": []}]}  # fmt: skip
    assert changed_threads(a, b) == [2]  # 1 is the same libc offset (ASLR moves pcs); 3 and 4 are not in both
    assert changed_threads(a, None) is None
    assert changed_threads({"threads": [{"tid": "x"}, 5]}, b) == []
