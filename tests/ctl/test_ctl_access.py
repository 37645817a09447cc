"""Who may do what: decided by the kernel's view of the peer (SO_PEERCRED/SO_PEERGROUPS)."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
from collections.abc import Callable

import pytest

from support.ctl import Served, take

Run = Callable[..., subprocess.CompletedProcess[str]]
NOBODY = 65534


def snapd_gid() -> int:
    return grp.getgrnam("snapd").gr_gid


@pytest.mark.kernel
def test_socket_is_0660_root_snapd(serve: Callable[..., Served]) -> None:
    s = serve()
    st = os.stat(s.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == 0 and st.st_gid == snapd_gid(), "the snapd group is created if missing"


@pytest.mark.kernel
def test_group_member_may_read_not_mutate(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    e = take(s.catalog)
    member = (NOBODY, NOBODY, [snapd_gid()])
    r = ctl(s.path, "list-cores", "--json", as_user=member)
    assert r.returncode == 0, r.stderr
    assert [c["id"] for c in json.loads(r.stdout)] == [e.id]
    for args in (["info", str(e.id)], ["status"], ["rules"]):
        r = ctl(s.path, *args, as_user=member)
        assert r.returncode == 0, (args, r.stderr)
    for args in (["rm", str(e.id)], ["pause"], ["resume"], ["reload"], ["snap", "1"]):
        r = ctl(s.path, *args, as_user=member)
        assert r.returncode == 1, args
        assert "permission denied: only root may run" in r.stderr, (args, r.stderr)
    assert os.path.exists(e.path) and not s.handler.switch.paused and s.handler.reloads == 0


@pytest.mark.kernel
def test_member_by_primary_group(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    take(s.catalog)
    r = ctl(s.path, "list-cores", as_user=(NOBODY, snapd_gid(), []))
    assert r.returncode == 0, r.stderr


@pytest.mark.kernel
def test_outsider_cannot_connect(serve: Callable[..., Served], ctl: Run) -> None:
    s = serve()
    take(s.catalog)
    r = ctl(s.path, "list-cores", as_user=(NOBODY, NOBODY, []))
    assert r.returncode == 1
    assert "permission denied" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.kernel
def test_outsider_refused_by_peer_check(serve: Callable[..., Served], ctl: Run) -> None:
    # Even if the socket file were opened to everyone, the peer check refuses outsiders.
    s = serve(mode=0o666)
    e = take(s.catalog)
    for args in (["list-cores"], ["info", str(e.id)], ["status"], ["rm", str(e.id)], ["pause"]):
        r = ctl(s.path, *args, as_user=(NOBODY, NOBODY, []))
        assert r.returncode == 1, args
        assert "permission denied: only root may use the ctl socket" in r.stderr, r.stderr
    assert os.path.exists(e.path) and not s.handler.switch.paused
    assert ctl(s.path, "list-cores").returncode == 0, "root still served"
