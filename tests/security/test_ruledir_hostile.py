"""The rules directory against hostile entries, on the real daemon.

Already proven in tests/daemon/test_daemon_rules.py::test_untrusted_rule_files_refused: files
owned by another uid, group- or world-writable files, and a symlink to a root-owned file are
refused (and a loaded rule made writable is unloaded). Here: a symlink to a user-owned file, a
hard link to one, a FIFO, a directory, a socket and a character device named *.yaml, dropped
before and while the daemon runs, and bombs from the corpus: each is listed as refused with a
reason, none hangs or crashes the daemon, the good rule beside them keeps firing."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
from pathlib import Path

import pytest

from support.daemon import DaemonHarness, syscall_rule
from support.hostile import NOBODY, Hostile
from support.proc import vm_kib
from support.waiting import wait_for

pytestmark = pytest.mark.kernel
FOLLOW_S = 5.0
BOMBS = [
    "bomb-billion-laughs.yaml",
    "bomb-quadratic.yaml",
    "deep-flow-seq.yaml",
    "deep-flow-map.yaml",
    "huge-int.yaml",
    "huge-many-keys.yaml",
    "huge-syscall-list.yaml",
    "huge-over-cap.yaml",
    "tag-00.yaml",
    "enc-invalid-0.yaml",
    "nul-raw-in-comm.yaml",
    "dup-target.yaml",
    "inject-comm-00.yaml",
]


def refused(daemon: DaemonHarness) -> dict[str, list[str]]:
    return {os.path.basename(r["path"]): r["errors"] for r in daemon.rules_list() if "errors" in r}


def loaded(daemon: DaemonHarness) -> set[str]:
    return {r["name"] for r in daemon.rules_list() if "name" in r}


def plant_specials(rules: Path, tmp: Path, tag: str) -> dict[str, str]:
    """Non-regular and foreign entries named *.yaml; returns name -> expected reason."""
    user_file = tmp / f"user-{tag}.yaml"
    user_file.write_text(syscall_rule(f"user-{tag}", 1))
    os.chown(user_file, NOBODY, NOBODY)
    os.chmod(user_file, 0o644)
    os.symlink(user_file, rules / f"symlink-user-{tag}.yaml")
    os.link(user_file, rules / f"hardlink-user-{tag}.yaml")  # root may link anything
    os.mkfifo(rules / f"fifo-{tag}.yaml", 0o644)
    (rules / f"dir-{tag}.yaml").mkdir(mode=0o755)
    os.mknod(rules / f"chardev-{tag}.yaml", 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(rules / f"sock-{tag}.yaml"))
    s.close()
    return {
        f"symlink-user-{tag}.yaml": "symlink",
        f"hardlink-user-{tag}.yaml": f"uid {NOBODY}",
        f"fifo-{tag}.yaml": "not a regular file",
        f"dir-{tag}.yaml": "not a regular file",
        f"chardev-{tag}.yaml": "not a regular file",
        f"sock-{tag}.yaml": "refused",
    }


def test_special_files_and_bombs_in_the_rules_dir(
    sec_daemon: DaemonHarness, hostile: Hostile, tmp_path: Path, rule_corpus: Path
) -> None:
    d = sec_daemon
    v = hostile("plain")
    d.write_rule("good.yaml", syscall_rule("good", v.pid))
    expected = plant_specials(d.rules, tmp_path, "a")
    d.start()
    assert loaded(d) == {"good"}
    bad = refused(d)
    for name, why in expected.items():
        assert name in bad, (name, bad)
        assert why in bad[name][0] and "refused" in bad[name][0], bad[name]

    # The same dropped while it runs, plus the corpus's bombs (root-owned, 0644: trusted, and
    # so parsed): every one refused with file:line:col, memory and service unharmed.
    hwm = vm_kib(d.pid, "VmHWM")
    expected.update(plant_specials(d.rules, tmp_path, "b"))
    for name in BOMBS:
        shutil.copyfile(rule_corpus / name, d.rules / name)
        os.chmod(d.rules / name, 0o644)
    wait_for(lambda: set(expected) | set(BOMBS) <= set(refused(d)), 30, "every entry to be refused")
    bad = refused(d)
    for name, why in expected.items():
        assert why in bad[name][0], bad[name]
    for name in BOMBS:
        path = re.escape(str(d.rules / name))
        assert all(re.match(rf"{path}:\d+:\d+: \S", e) for e in bad[name]), bad[name]
    assert loaded(d) == {"good"}
    assert d.status()["bad_rule_files"] == len(expected) + len(BOMBS)
    grown = (vm_kib(d.pid, "VmHWM") - hwm) >> 10
    assert grown < 64, f"the daemon's peak RSS grew {grown} MiB reading the bombs"

    v.cmd("g 1")
    (core,) = wait_for(lambda: d.complete("good"), 20, "the good rule's core")
    assert core["pid"] == v.pid
    log = d.log_text()
    assert "Traceback" not in log
    v.cmd("p")


@pytest.mark.parametrize("how", ["world-writable", "user-owned"])
def test_untrusted_rules_directory_refused(sec_daemon: DaemonHarness, hostile: Hostile, how: str) -> None:
    d = sec_daemon
    v = hostile("plain")
    d.write_rule("good.yaml", syscall_rule("good", v.pid))
    if how == "world-writable":
        os.chmod(d.rules, 0o777)
    else:
        os.chown(d.rules, NOBODY, NOBODY)
    d.start()
    assert loaded(d) == set(), "no rule is loaded from a directory others control"
