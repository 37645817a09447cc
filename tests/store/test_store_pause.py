"""The kill switch persists in the state dir and fails safe."""

from __future__ import annotations

import os
from pathlib import Path

from snapd.store import PARTIAL_PREFIX, PauseSwitch


def test_pause_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sw = PauseSwitch(state)
    assert not sw.paused
    sw.pause("too many cores", uid=0)
    again = PauseSwitch(state)  # a new daemon
    got = again.get()
    assert got.paused and got.reason == "too many cores" and got.uid == 0 and got.since > 0
    assert (os.stat(state / "paused.json").st_mode & 0o777) == 0o600
    again.resume(uid=0)
    assert not PauseSwitch(state).paused
    assert not [n for n in os.listdir(state) if n.startswith(PARTIAL_PREFIX)]


def test_damaged_switch_reads_paused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    PauseSwitch(state).resume()
    (state / "paused.json").write_text("{not json")
    got = PauseSwitch(state).get()
    assert got.paused and "unreadable" in got.reason


def test_symlinked_switch_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "elsewhere.json"
    target.write_text('{"paused": false}')
    (state / "paused.json").symlink_to(target)
    assert PauseSwitch(state).paused, "a symlink is not trusted: fail safe"
    PauseSwitch(state).resume()  # replaces the symlink itself
    assert target.read_text() == '{"paused": false}'
    assert not (state / "paused.json").is_symlink()
    assert not PauseSwitch(state).paused
