"""The lane's bookkeeping: JUnit XML read back, the table, and what counts as green."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.kernels import lane

from support.waiting import scaled, wait_for

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.core.test_pages" name="test_scan_and_fallback_agree" time="1.0"/>
<testcase classname="tests.probe.test_probes" name="test_every_fires_on_time" time="2.0">
<failure message="boom">trace</failure></testcase>
<testcase classname="tests.core.test_gcore" name="test_x[fork]" time="0.1"><skipped/></testcase>
</testsuite></testsuites>
"""


def row(tmp_path: Path, name: str, text: str, rc: int) -> lane.Row:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(text)
    r = lane.Row(name, "host", xml, seconds=3.0, exit_code=rc)
    r.results = lane.read_junit(xml)
    return r


def test_junit_results_by_test_id(tmp_path: Path) -> None:
    r = row(tmp_path, "k", JUNIT, 1)
    assert r.results == {
        "core/test_pages.py::test_scan_and_fallback_agree": "pass",
        "probe/test_probes.py::test_every_fires_on_time": "FAIL",
        "core/test_gcore.py::test_x[fork]": "skip",
    }
    assert lane.read_junit(tmp_path / "missing.xml") == {}


def test_green_needs_every_kernel_to_pass_the_same_tests(tmp_path: Path) -> None:
    one = '<testsuites><testsuite><testcase classname="tests.a" name="t1"/></testsuite></testsuites>'
    two = one.replace("</testsuite>", '<testcase classname="tests.a" name="t2"/></testsuite>')
    a, b = row(tmp_path, "a", two, 0), row(tmp_path, "b", two, 0)
    assert lane.green([a, b])
    assert not lane.green([a, row(tmp_path, "c", one, 0)])  # a test missing on one kernel
    assert not lane.green([a, row(tmp_path, "d", two, 1)])  # pytest's exit status counts too
    assert not lane.green([row(tmp_path, "e", JUNIT, 1)])  # a failure, a skip
    assert not lane.green([])
    text = lane.table([a, b])
    assert text.splitlines()[0].split() == ["test", "a", "b"]
    assert "a.py::t2" in text and text.splitlines()[-1].split()[-2:] == ["2/2", "3s"]


def test_deadlines_scale_with_the_measured_slowdown() -> None:
    assert lane.timeout_scale(0.1, 0.1) == 2.0
    assert lane.timeout_scale(0.1, 1.6) == 32.0
    assert lane.timeout_scale(0.2, 0.05) == 1.0
    assert lane.timeout_scale(0.0, 1.0) == 1.0


def test_a_killed_guest_still_shows_what_it_passed(tmp_path: Path) -> None:
    log = tmp_path / "k.log"
    log.write_text(
        "tests/core/test_pages.py::test_a PASSED [ 50%]\n"
        "tests/probe/test_probes.py::test_b[x: {y: 1}-z] FAILED [ 75%]\n"
        "tests/reliability/test_rel_kill.py::test_c \n"
    )
    assert lane.read_streamed(log) == {
        "core/test_pages.py::test_a": "pass",
        "probe/test_probes.py::test_b[x: {y: 1}-z]": "FAIL",
        "reliability/test_rel_kill.py::test_c": "killed",
    }


def test_a_stopped_lane_leaves_no_guest_behind(tmp_path: Path) -> None:
    """A guest runs in its own session (no signal to the lane reaches it): stopping the lane
    kills its whole group, qemu included, rather than leaving it running for hours."""
    pidfile = tmp_path / "pid"
    guest = f"sleep 300 & echo $! > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; echo up; wait"
    code = (
        "import signal; from pathlib import Path; from tests.kernels import lane\n"
        "signal.signal(signal.SIGTERM, lane._on_stop)\n"
        f"lane._run_streamed(['sh', '-c', {guest!r}], 600, '', Path({str(tmp_path / 'log')!r}))\n"
    )
    path = [str(lane.REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    stand_in = subprocess.Popen([sys.executable, "-c", code], cwd=lane.REPO, env=env)
    try:
        wait_for(pidfile.exists, 60, "the stand-in guest to start")
        member = int(pidfile.read_text())
        stand_in.terminate()
        assert stand_in.wait(timeout=scaled(60)) == 128 + signal.SIGTERM
    finally:
        stand_in.kill()
        stand_in.wait()
    wait_for(lambda: not alive(member), 60, f"the guest's process {member} to be killed with the lane")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
