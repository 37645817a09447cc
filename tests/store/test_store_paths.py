"""Names cannot escape the store; symlinks and hard links planted in it are never followed."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapd.store import Catalog, Entry, TemplateError, UnsafePath, expand, validate_template
from snapd.template import MAX_NAME, NameFields

SAFE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")

HOSTILE_COMMS = [
    "../../etc/passwd",
    "/",
    "..",
    ".",
    "...",
    ".snapd-partial.x",
    "-rf",
    "--help",
    "a\nb",
    "\x1b]0;pwned\x07",
    "é",
    "",
    " ",
    "x" * 300,
    "a\0b",
    "..%2f..",
    "a/../../b",
    "\\..\\..",
    "\udcff",
    "catalog.db",
    "cores",
]
HOSTILE_TEMPLATES = [
    "%e",
    "../%e",
    "/etc/%e",
    "%e/..",
    "..%e",
    ".%e",
    "%r",
    "%%",
    "%h",
    "-%p",
    "%t%T%p%e%r%n%h",
    "a/b/c",
    "../../../../tmp/x",
    ".",
    "..",
    "%e%e%e%e%e%e%e%e%e%e%e%e%e%e%e%e%e%e%e%e",
    "/",
    "core.%e.%p",
    "...%e...",
    "%T",
]


def check(name: str) -> None:
    assert SAFE.match(name), repr(name)
    assert "/" not in name and ".." not in name and name not in (".", "..")
    assert not name.startswith((".", "-"))
    assert len(name) <= MAX_NAME


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_hostile_names_stay_inside(template: str) -> None:
    for comm in HOSTILE_COMMS:
        check(expand(template, NameFields(pid=1, comm=comm, rule=comm, seq=3, host=comm, when=1.5e9)))


@settings(max_examples=300, deadline=None)
@given(
    template=st.text(alphabet=st.sampled_from(list("%etTpnrh./-_a\\\0 \n")), min_size=1, max_size=40),
    comm=st.text(max_size=64),
    rule=st.text(max_size=64),
)
def test_any_template_any_comm(template: str, comm: str, rule: str) -> None:
    try:
        validate_template(template)
    except TemplateError:
        return
    check(expand(template, NameFields(pid=2, comm=comm, rule=rule, seq=9, host="h", when=0)))


@pytest.mark.parametrize("bad", ["%", "abc%", "%x", "%E", "", "%/"])
def test_bad_templates_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        validate_template(bad)


def test_specifiers() -> None:
    f = NameFields(pid=42, comm="my app", rule="oom", seq=7, host="web1", when=1795741518.9)
    assert expand("%t_%p_%e_%r_%n_%h", f) == "1795741518_42_my_app_oom_7_web1"
    assert expand("%T", f) == "20261127T010518Z"


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_reserve_paths_inside_cores_dir(catalog: Catalog, template: str) -> None:
    for comm in HOSTILE_COMMS:
        e = catalog.reserve(rule=comm, pid=1, comm=comm, template=template)
        assert os.path.dirname(e.path) == catalog.cores_dir
        assert os.path.realpath(e.path) == e.path
        check(os.path.basename(e.path))


def test_names_are_unique(catalog: Catalog) -> None:
    paths = {catalog.reserve(rule="r", pid=1, comm="x", template="core").path for _ in range(20)}
    assert len(paths) == 20


def test_planted_symlink_not_followed(
    catalog: Catalog, tmp_path: Path, core_writer: Callable[..., object]
) -> None:
    victim = tmp_path / "precious"
    victim.write_bytes(b"keep me")
    os.chmod(victim, 0o644)
    planted = Path(catalog.cores_dir) / "core.victim"
    planted.symlink_to(victim)
    e = catalog.reserve(rule="r", pid=1, comm="victim", template="core.%e")
    assert e.path != str(planted), "a name held by anything is never chosen"
    done = catalog.publish(e.id, core_writer(e.path))  # type: ignore[arg-type]
    assert done.complete
    assert victim.read_bytes() == b"keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert planted.is_symlink()


def test_symlink_planted_after_reserve(
    catalog: Catalog, tmp_path: Path, core_writer: Callable[..., object]
) -> None:
    victim = tmp_path / "precious"
    victim.write_bytes(b"keep me")
    os.chmod(victim, 0o644)
    e = catalog.reserve(rule="r", pid=1, comm="victim", template="core.%e")
    os.symlink(victim, e.path)
    # The writer's link(2) refuses to replace it ...
    with pytest.raises(FileExistsError):
        core_writer(e.path)
    failed = catalog.fail(e.id, "cannot link the core: file exists")
    assert failed.status.startswith("failed:")
    # ... and publishing whatever is at that name does not follow it either.
    e2 = catalog.reserve(rule="r", pid=1, comm="victim2", template="core.%e")
    os.symlink(victim, e2.path)
    info = dataclasses.replace(core_writer(os.path.join(catalog.cores_dir, "x")), path=e2.path)  # type: ignore[type-var]
    out = catalog.publish(e2.id, info)
    assert out.status == "failed: core file unusable: a symlink"
    assert victim.read_bytes() == b"keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert os.path.islink(e.path) and os.path.islink(e2.path), "left for a human, not deleted or followed"


def test_planted_hard_link_not_overwritten(
    catalog: Catalog, tmp_path: Path, core_writer: Callable[..., object], take: Callable[..., Entry]
) -> None:
    outside = Path(catalog.state_dir) / "outside"
    outside.write_bytes(b"original")
    planted = Path(catalog.cores_dir) / "core.hl"
    os.link(outside, planted)
    e = catalog.reserve(rule="r", pid=1, template="core.hl")
    assert e.path != str(planted)
    catalog.publish(e.id, core_writer(e.path))  # type: ignore[arg-type]
    assert outside.read_bytes() == b"original"
    # A hard link made to a published core makes it fail the single-link check.
    e3 = catalog.reserve(rule="r", pid=1, template="core.x")
    info = core_writer(e3.path)
    os.link(e3.path, Path(catalog.state_dir) / "stolen")
    assert catalog.publish(e3.id, info).status.startswith("failed: core file is not a regular file")  # type: ignore[arg-type]


def test_state_dir_symlink_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafePath):
        Catalog(link)


def test_cores_dir_symlink_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (state / "cores").symlink_to(elsewhere)
    with pytest.raises(UnsafePath, match="symlink"):
        Catalog(state)


def test_db_symlink_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "target.db"
    (state / "catalog.db").symlink_to(target)
    with pytest.raises(UnsafePath):
        Catalog(state)
    assert not target.exists()


def test_world_writable_state_dir_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    with pytest.raises(UnsafePath, match="others write"):
        Catalog(state)


def test_cores_dir_mode_repaired(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "cores").mkdir(mode=0o700)
    os.chmod(state / "cores", 0o750)
    with Catalog(state) as c:
        assert stat.S_IMODE(os.stat(c.cores_dir).st_mode) == 0o700
