"""What a hostile target's name can do through the daemon's own outputs: `action.run`
placeholders (no shell: the name is one argv element, nothing is run) and the daemon's log."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from support.daemon import DaemonHarness, syscall_rule
from support.hostile import Hostile
from support.waiting import wait_for

pytestmark = pytest.mark.kernel


SHELLY = "$(id>p);`id`'\"\n"  # 15 bytes of shell syntax and a newline
ESCAPES = "\x1b[2J\x1b]0;x\x07\x9b1m"


def test_run_placeholders_are_argv_data(sec_daemon: DaemonHarness, hostile: Hostile, tmp_path: Path) -> None:
    d = sec_daemon
    out = tmp_path / "argv.json"
    script = tmp_path / "record.py"
    script.write_text(
        f"#!{os.path.realpath('/usr/bin/python3')}\nimport json, sys\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    os.chmod(script, 0o755)
    v = hostile(SHELLY)
    d.write_rule(
        "run.yaml",
        syscall_rule(
            "run", v.pid, action=f"  run: [{script}, '{{comm}}', 'pre-{{comm}}-post', '{{rule}}']\n"
        ),
    )
    d.start()
    v.cmd("g 1")
    wait_for(out.exists, 30, "the run action")
    assert json.loads(out.read_text()) == [SHELLY, f"pre-{SHELLY}-post", "run"]
    assert not (Path("/") / "p").exists() and not (d.state / "p").exists() and not (tmp_path / "p").exists()
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    v.cmd("p")


def test_daemon_log_never_carries_raw_escapes(sec_daemon: DaemonHarness, hostile: Hostile) -> None:
    d = sec_daemon
    v = hostile(ESCAPES)
    d.write_rule("esc.yaml", syscall_rule("esc", v.pid))
    d.start()
    v.cmd("g 1")
    wait_for(lambda: d.complete("esc"), 30, "the core")
    v.cmd("p")
    log = d.log_text()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\x9b]", log), [
        line for line in log.splitlines() if re.search(r"[\x00-\x08\x0b-\x1f\x7f\x9b]", line)
    ]
