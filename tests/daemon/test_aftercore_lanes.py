"""The work after publication (snapd.daemon.aftercore): a core retention removes takes its job
with it. The job's child reads the core; while it lives the unlinked file keeps its blocks, which
the next core (the one retention made room for) needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapd.daemon.aftercore import Task, _Lane
from snapd.sandbox import BoundedRun, Failure, Limits, Result

JOBS = Path(__file__).parent.parent / "sandbox"


@pytest.fixture(autouse=True)
def _job_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", f"{JOBS}:{os.environ.get('PYTHONPATH', '')}".rstrip(":"))


def test_a_removed_core_takes_its_running_and_queued_jobs_with_it() -> None:
    started: list[BoundedRun] = []
    done: list[tuple[int, Result | Failure]] = []

    def start(task: Task) -> BoundedRun:
        run = BoundedRun("sbx_job", {"what": "sleep"}, Limits(deadline=600))
        started.append(run)
        return run

    lane = _Lane("capture", start, lambda t, r: done.append((t.core_id, r)))
    lane.add(Task(1))
    lane.add(Task(2))
    lane.tick(0.0)
    assert lane.current is not None and lane.current[0].core_id == 1
    pid = started[0].proc.pid
    assert lane.drop(2) is False  # queued only: forgotten, nothing to kill
    assert [t.core_id for t in lane.queue] == []
    assert lane.drop(1) is True
    assert lane.idle
    # killed and reaped before drop() returned: no child left to hold the file
    assert not os.path.exists(f"/proc/{pid}")
    lane.tick(1.0)
    assert lane.idle and done == [] and len(started) == 1
