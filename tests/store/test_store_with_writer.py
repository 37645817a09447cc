"""The store with the real core writer: reserve -> write_core(replace=False) -> publish -> gdb."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable

import pytest

from snapd import procfs
from snapd.procfs.context import capture
from snapd.store import PARTIAL_PREFIX, Catalog
from support.waiting import wait_for


@pytest.mark.kernel
@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb")
def test_real_dump_is_catalogued_and_readable(catalog: Catalog, spawn: Callable[..., object]) -> None:
    from snapd.core import write_core

    v = spawn(["sh", "-c", "echo ready; exec sleep 600"])
    pid: int = v.pid  # type: ignore[attr-defined]
    wait_for(lambda: procfs.exe(pid).endswith("sleep"), 10, "sh to exec sleep")
    entry = catalog.reserve(
        rule="it", pid=pid, trigger={"syscall": "nanosleep", "ret": 0}, context=capture(pid)
    )
    assert entry.exe.endswith("sleep") and entry.comm == "sleep"
    info = write_core(pid, entry.path, content="default", replace=False)
    done = catalog.publish(entry.id, info)
    assert done.complete, done.status
    assert v.alive(), "the target runs on"  # type: ignore[attr-defined]
    assert done.size == os.path.getsize(entry.path) and done.threads == 1
    assert stat.S_IMODE(os.stat(entry.path).st_mode) == 0o600
    assert not [n for n in os.listdir(catalog.cores_dir) if n.startswith(PARTIAL_PREFIX)]
    r = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "info threads", done.exe, done.path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"LWP {pid}" in r.stdout, r.stdout + r.stderr
    # The name is taken: a second dump to the same path is refused, never overwriting.
    with pytest.raises(Exception) as err:
        write_core(pid, entry.path, replace=False)
    exists = (err.value, err.value.__cause__)
    assert any(isinstance(e, FileExistsError) for e in exists), err.value
    assert not [n for n in os.listdir(catalog.cores_dir) if n.startswith(PARTIAL_PREFIX)]
