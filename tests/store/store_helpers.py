"""Helpers shared by the store tests and the child processes they start (importable by name)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from snapd.core.info import CoreInfo

# Loaded by path: child processes import this module without the tests directory on sys.path.
_root = importlib.util.spec_from_file_location(
    "_snapd_testlib", Path(__file__).resolve().parents[1] / "snapd_testlib.py"
)
assert _root is not None and _root.loader is not None
_mod = importlib.util.module_from_spec(_root)
_root.loader.exec_module(_mod)
#: tests/snapd_testlib.py's poller (no sleep-then-assert).
wait_for: Callable[..., object] = _mod.wait_for


#: a writer following snapd.core's contract (temp file, link, never replace), for catalog tests
write_like_core_writer: Callable[..., CoreInfo] = _mod.write_like_core_writer
