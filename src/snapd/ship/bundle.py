"""Bundles: a core and the binaries it ran, in one file to send to someone.

A bundle is a ship container (:mod:`snapd.ship.container`) holding, in this order::

    manifest.json        what follows, and where it came from (snapd.ship.manifest)
    core                 the core, holes preserved
    root/PATH...         every ELF file the core maps that could be proven (by build-id) to be
                         the one that ran, at its original path under root/ (a sysroot)
    entry.json           the catalog entry, the /proc context and the stack report, when given
    context.json
    report.json

:func:`open_bundle` unpacks one into a private directory for a debugger; the bundle is hostile
input there: sizes are bounded, names are relative and free of '..', no symlink is ever created
or followed (every file is made with O_EXCL|O_NOFOLLOW relative to a directory fd we created).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from snapd import __version__
from snapd.ship import container, sparse
from snapd.ship.container import Kind, Limits
from snapd.ship.elfid import CoreFiles, file_build_id, read_core_files
from snapd.ship.elfsource import NOT_HERE, ElfSource, HostFiles
from snapd.ship.errors import BundleError, ExeMismatch
from snapd.ship.manifest import RECORDS, BundledFile, Manifest, MissingFile
from snapd.ship.opencore import open_core
from snapd.ship.publish import atomic_output

SUFFIX = ".snapd"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def write_bundle(
    core_path: str,
    out_path: str,
    *,
    exe: str | None = None,
    entry: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    elf_source: ElfSource | None = None,
    name: str | None = None,
    host: str | None = None,
    level: int = 3,
    threads: int = -1,
    replace: bool = False,
) -> Manifest:
    """Write a bundle of ``core_path`` (a plain or compressed core) to ``out_path``, atomically.

    ``exe``: where the executable is now, when not at its original path (checked by build-id).
    ``elf_source``: where mapped ELF files are found (default: this host's files, by build-id).
    """
    source = elf_source or HostFiles()
    with open_core(core_path) as plain:
        cf = read_core_files(plain)
        picked, missing = _pick_files(cf, source, exe)
        given = (("entry", entry), ("context", context), ("report", report))
        records = {k: v for k, v in given if v is not None}
        fds: list[int] = []
        try:
            core_fd = _open_ro(plain, core_path)
            fds.append(core_fd)
            core_runs = sparse.data_runs(core_fd)
            files = []
            for mf, local, verified in picked:
                fd = _open_ro(local, local)
                fds.append(fd)
                runs = sparse.data_runs(fd)
                size = os.fstat(fd).st_size
                files.append(
                    (
                        fd,
                        runs,
                        BundledFile(
                            mf.path,
                            "root" + mf.path,
                            mf.build_id or "",
                            size,
                            sparse.data_bytes(runs),
                            verified,
                        ),
                    )
                )
            manifest = Manifest(
                name=name or os.path.basename(core_path),
                host=host or socket.gethostname(),
                pid=cf.pid,
                comm=cf.comm,
                exe=cf.exe,
                created=time.time(),
                snapd_version=__version__,
                core_size=os.fstat(core_fd).st_size,
                core_data_bytes=sparse.data_bytes(core_runs),
                files=[f for _, _, f in files],
                missing=missing,
                records=list(records),
            )
            with (
                atomic_output(out_path, mode=0o600, replace=replace) as out,
                os.fdopen(os.dup(out), "wb", buffering=1 << 20) as f,
            ):
                w = container.Writer(f, Kind.BUNDLE, level=level, threads=threads)
                w.add_bytes("manifest.json", _json(manifest.to_dict()))
                w.add_fd("core", core_fd, mode=0o600, runs=core_runs)
                for fd, runs, bf in files:
                    w.add_fd(bf.member, fd, mode=0o755 if os.fstat(fd).st_mode & 0o111 else 0o644, runs=runs)
                for key, rec in records.items():
                    w.add_bytes(f"{key}.json", _json(rec))
                w.close()
                f.flush()
                manifest.bundle_bytes = os.fstat(out).st_size
        except EOFError as err:
            raise BundleError(core_path, f"a file changed while being bundled: {err}") from err
        except OSError as err:
            raise BundleError(out_path, f"cannot write the bundle: {err.strerror}") from err
        finally:
            for fd in fds:
                os.close(fd)
    return manifest


def _json(d: object) -> bytes:
    return json.dumps(d, indent=1, sort_keys=True, default=str).encode()


def _open_ro(path: str, shown: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise BundleError(shown, f"cannot read: {err.strerror}") from err


def _pick_files(
    cf: CoreFiles, source: ElfSource, exe: str | None
) -> tuple[list[tuple[Any, str, bool]], list[MissingFile]]:
    picked: list[tuple[Any, str, bool]] = []
    missing: list[MissingFile] = []
    for mf in cf.files:
        if not (mf.code or mf.build_id or mf.path == cf.exe):
            continue  # never mapped executable: data (locales, shared memory, /dev/zero), not a binary
        if exe is not None and mf.path == cf.exe:
            found = file_build_id(exe)
            if found is None:
                raise BundleError(exe, "not an ELF file with a build-id")
            if mf.build_id and found != mf.build_id:
                raise ExeMismatch(exe, found, mf.build_id)
            picked.append((mf, exe, mf.build_id is not None))
            continue
        try:
            container.check_name("root" + mf.path)
        except ValueError:
            missing.append(MissingFile(mf.path, mf.build_id or "", "its path cannot be stored safely"))
            continue
        local, why = source.lookup(mf.path, mf.build_id)
        if local is None or not os.path.isfile(local):
            if mf.deleted and why == NOT_HERE:
                why = "deleted while the process ran"
                if mf.path == cf.exe:
                    why += "; pass --exe with a copy of it"
            missing.append(MissingFile(mf.path, mf.build_id or "", why))
            continue
        picked.append((mf, local, mf.build_id is not None))
    if exe is not None and not cf.exe:
        raise BundleError(exe, "the core does not say which file was the executable (no AT_ENTRY mapping)")
    return picked, missing


@dataclass
class Unpacked:
    """A bundle unpacked for a debugger."""

    root: str  # the private directory
    manifest: Manifest
    core: str
    sysroot: str  # root/: the mapped files at their original paths
    exe: str | None  # the executable inside sysroot, when it was bundled
    solib_dirs: list[str] = field(default_factory=list)  # directories of the bundled libraries
    entry: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    report: dict[str, Any] | None = None


def read_manifest(path: str, limits: Limits | None = None) -> Manifest:
    """The manifest of a bundle, reading only its first member."""
    try:
        with open(path, "rb") as f:
            r = container.Reader(f, path, limits)
            if r.kind != Kind.BUNDLE:
                raise BundleError(path, "a compressed core, not a bundle")
            for m in r.members():
                if m.name != "manifest.json":
                    break
                man = _parse_manifest(path, r.read_small(m))
                man.bundle_bytes = os.fstat(f.fileno()).st_size
                return man
    except OSError as err:
        raise BundleError(path, err.strerror or str(err)) from err
    raise BundleError(path, "no manifest.json first: not a bundle snapd wrote")


def _parse_manifest(path: str, raw: bytes) -> Manifest:
    try:
        return Manifest.from_dict(json.loads(raw))
    except (ValueError, RecursionError) as err:
        raise BundleError(path, f"manifest.json is not valid: {err}") from err


def open_bundle(path: str, into_dir: str, limits: Limits | None = None) -> Unpacked:
    """Unpack the bundle ``path`` into ``into_dir`` (created 0700; if it exists it must be an
    empty directory of ours), sparse. Raise :class:`BundleError` on anything hostile."""
    created = False
    try:
        os.mkdir(into_dir, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as err:
        raise BundleError(into_dir, f"cannot create: {err.strerror}") from err
    try:
        dfd = os.open(into_dir, _DIR_FLAGS)
    except OSError as err:
        raise BundleError(into_dir, f"not a directory we can use: {err.strerror}") from err
    try:
        st = os.fstat(dfd)
        if st.st_uid != os.geteuid() or os.listdir(dfd):
            raise BundleError(into_dir, "must be an empty directory of ours")
        os.fchmod(dfd, 0o700)
        try:
            with open(path, "rb") as f:
                return _unpack(f, path, os.path.abspath(into_dir), dfd, limits or Limits())
        except OSError as err:
            raise BundleError(path, err.strerror or str(err)) from err
        except BaseException:
            _remove_contents(dfd)  # nothing half-unpacked stays behind
            raise
    finally:
        os.close(dfd)
        if created and not os.listdir(into_dir):
            os.rmdir(into_dir)


def _remove_contents(dfd: int) -> None:
    """Remove everything under ``dfd`` (made by us; unlinkat/rmdir never follow a link)."""
    for name in os.listdir(dfd):
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            try:
                _remove_contents(sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)


def _unpack(f: Any, path: str, root: str, dfd: int, limits: Limits) -> Unpacked:
    r = container.Reader(f, path, limits)
    if r.kind != Kind.BUNDLE:
        raise BundleError(path, "a compressed core, not a bundle (open it with open_core)")
    manifest: Manifest | None = None
    records: dict[str, dict[str, Any]] = {}
    have: set[str] = set()
    for m in r.members():
        if manifest is None:
            if m.name != "manifest.json":
                raise BundleError(path, "no manifest.json first: not a bundle snapd wrote")
            manifest = _parse_manifest(path, r.read_small(m))
            continue
        if m.name in have:
            raise BundleError(path, f"member {m.name!r} appears twice")
        have.add(m.name)
        rec = m.name.removesuffix(".json")
        if m.name.endswith(".json") and rec in RECORDS and "/" not in m.name:
            try:
                value = json.loads(r.read_small(m))
            except (ValueError, RecursionError) as err:
                raise BundleError(path, f"{m.name} is not valid JSON: {err}") from err
            if isinstance(value, dict):
                records[rec] = value
            continue
        if m.name != "core" and not m.name.startswith("root/"):
            continue  # unknown member: skipped (a newer writer's), never written out
        _check_space(dfd, m.data_bytes, path)
        fd = _create(dfd, m.name, m.mode & 0o755 if m.name != "core" else 0o600, path)
        try:
            r.extract(m, fd)
        except OSError as err:
            raise BundleError(root, f"cannot write {m.name}: {err.strerror}") from err
        finally:
            os.close(fd)
    if manifest is None:
        raise BundleError(path, "empty: no manifest")
    if "core" not in have:
        raise BundleError(path, "holds no core")
    sysroot = os.path.join(root, "root")
    exe_member = manifest.exe_member
    exe = os.path.join(root, exe_member) if exe_member and exe_member in have else None
    dirs = sorted({os.path.dirname(os.path.join(root, n)) for n in have if n.startswith("root/")})
    return Unpacked(
        root=root,
        manifest=manifest,
        core=os.path.join(root, "core"),
        sysroot=sysroot,
        exe=exe,
        solib_dirs=dirs,
        entry=records.get("entry"),
        context=records.get("context"),
        report=records.get("report"),
    )


def _check_space(dfd: int, need: int, path: str) -> None:
    sv = os.fstatvfs(dfd)
    free = sv.f_bavail * sv.f_frsize
    if need > free:
        raise BundleError(path, f"needs {need / 2**30:.1f} GiB to unpack, {free / 2**30:.1f} GiB free there")


def _create(dfd: int, name: str, mode: int, path: str) -> int:
    """Create ``name`` (relative, checked) under ``dfd``: directories 0700, never following links."""
    parts = container.check_name(name).split("/")
    fds: list[int] = []
    cur = dfd
    try:
        for p in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(p, 0o700, dir_fd=cur)
            try:
                nxt = os.open(p, _DIR_FLAGS, dir_fd=cur)
            except OSError as err:
                raise BundleError(path, f"member {name!r}: {p!r} is not a directory we made") from err
            fds.append(nxt)
            cur = nxt
        try:
            fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode & 0o755,
                dir_fd=cur,
            )
        except FileExistsError as err:
            raise BundleError(path, f"member {name!r} collides with another") from err
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BundleError(path, f"member {name!r}: not a regular file")
        return fd
    finally:
        for x in fds:
            os.close(x)


@contextlib.contextmanager
def unpacked(path: str, limits: Limits | None = None) -> Iterator[Unpacked]:
    """Unpack ``path`` into a private temp directory, removed when the block ends."""
    from snapd.ship.opencore import private_dir

    with private_dir("snapd-bundle-") as d:
        yield open_bundle(path, os.path.join(d, "b"), limits)
