"""A content-addressed store of ELF files by GNU build-id: the binaries as they ran.

At capture time the daemon calls :meth:`ElfCache.keep` for each ELF file the target maps (best
given as ``/proc/PID/map_files/START-END``, which is the very inode mapped even if the path was
replaced or deleted since). Each build-id is stored once, whatever the number of cores: a hard
link when the file is on the cache's file system (no bytes copied; the inode outlives a package
upgrade, which renames a new file over the old name), else a reflink (FICLONE, ioctl_ficlone(2)),
else a copy, published atomically. A file whose build-id is not the claimed one is refused.

The cache is a directory (0700) of files named by build-id. :meth:`usage` counts what it costs
(a hard link shares its blocks with the original until that is removed); :meth:`gc` removes
what no core references any more. One thread at a time (the daemon's store thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import stat
from dataclasses import dataclass

from snapd.ship import sparse
from snapd.ship.elfid import fd_build_id
from snapd.ship.errors import CacheError

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_ID = re.compile(r"[0-9a-f]{8,128}")


def valid_id(build_id: str) -> bool:
    return bool(_ID.fullmatch(build_id))


@dataclass(frozen=True)
class Kept:
    build_id: str
    path: str  # the cache file
    how: str  # "present", "link", "reflink" or "copy"


@dataclass(frozen=True)
class CacheUsage:
    files: int
    disk_bytes: int  # all blocks of cache files
    own_bytes: int  # blocks only the cache holds (files with one link): what gc frees


class ElfCache:
    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            st = os.lstat(self.directory)
        except OSError as err:
            raise CacheError(self.directory, f"cannot create the ELF cache: {err.strerror}") from err
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise CacheError(self.directory, "not a directory of ours that only we can write; fix it")

    def path_of(self, build_id: str) -> str:
        if not valid_id(build_id):
            raise CacheError(build_id, "not a build-id (lower-case hex)")
        return os.path.join(self.directory, build_id)

    def has(self, build_id: str) -> bool:
        return valid_id(build_id) and os.path.isfile(self.path_of(build_id))

    def keep(self, source: str, build_id: str | None = None) -> Kept:
        """Keep the ELF file at ``source``; ``build_id`` (hex) is checked against the file's."""
        if build_id is not None and self.has(build_id):
            return Kept(build_id, self.path_of(build_id), "present")
        try:
            f = open(source, "rb")  # noqa: SIM115 (closed below)
        except OSError as err:
            raise CacheError(source, f"cannot read: {err.strerror}") from err
        with f:
            found = fd_build_id(f)
            if found is None:
                raise CacheError(source, "not an ELF file with a GNU build-id; nothing to key it by")
            if build_id is not None and found != build_id:
                raise CacheError(source, f"has build-id {found}, not {build_id}: the file changed")
            dest = self.path_of(found)
            if os.path.isfile(dest):
                return Kept(found, dest, "present")
            return Kept(found, dest, self._store(f.fileno(), dest, source))

    def _store(self, fd: int, dest: str, source: str) -> str:
        # A hard link of the open file itself (linkat(2) AT_EMPTY_PATH, which needs
        # CAP_DAC_READ_SEARCH): atomic, the inode that was read, and EXDEV when the cache is on
        # another file system, ENOENT when the file was deleted (i_nlink 0).
        try:
            _link_fd(fd, dest)
            return "link"
        except FileExistsError:
            return "present"
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EACCES, errno.EMLINK):
                raise CacheError(dest, f"cannot link {source}: {err.strerror}") from err
        tmp = os.path.join(self.directory, f".partial.{os.getpid()}.{os.urandom(6).hex()}")
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
        except OSError as err:
            raise CacheError(self.directory, f"cannot write: {err.strerror}") from err
        try:
            try:
                fcntl.ioctl(out, FICLONE, fd)
                how = "reflink"
            except OSError:
                _copy(fd, out)
                how = "copy"
            os.fsync(out)
            os.close(out)
            out = -1
            try:
                os.link(tmp, dest)
            except FileExistsError:
                how = "present"
        except OSError as err:
            raise CacheError(dest, f"cannot keep {source}: {err.strerror}") from err
        finally:
            if out >= 0:
                os.close(out)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return how

    def lookup(self, path: str, build_id: str | None) -> tuple[str | None, str]:
        """The :class:`~snapd.ship.elfsource.ElfSource` interface: the kept copy, by build-id."""
        if build_id is None or not self.has(build_id):
            return None, "not in the ELF cache"
        return self.path_of(build_id), ""

    def ids(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory) if valid_id(n))

    def usage(self) -> CacheUsage:
        files = disk = own = 0
        for n in self.ids():
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(self.directory, n))
                files += 1
                disk += st.st_blocks * 512
                if st.st_nlink == 1:
                    own += st.st_blocks * 512
        return CacheUsage(files, disk, own)

    def own_bytes(self, build_id: str) -> int:
        """Blocks only the cache holds for ``build_id`` (0 while the original file shares them,
        or when it is not kept): what releasing it would free."""
        try:
            st = os.lstat(self.path_of(build_id))
        except (FileNotFoundError, CacheError):
            return 0
        return st.st_blocks * 512 if st.st_nlink == 1 else 0

    def release(self, build_id: str) -> bool:
        try:
            os.unlink(self.path_of(build_id))
            return True
        except FileNotFoundError:
            return False

    def gc(self, referenced: set[str] | frozenset[str]) -> list[str]:
        """Remove every kept file whose build-id no core references; return the removed ids."""
        gone = [b for b in self.ids() if b not in referenced and self.release(b)]
        for n in os.listdir(self.directory):  # leftovers of a crash in _store
            if n.startswith(".partial."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, n))
        return gone


_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def _link_fd(fd: int, dest: str) -> None:
    if _libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(dest), _AT_EMPTY_PATH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dest)


def _copy(src: int, dst: int) -> None:
    """Copy the data runs of ``src`` (copy_file_range(2), in-kernel), keeping holes."""
    size = os.fstat(src).st_size
    runs = sparse.data_runs(src, size)
    try:
        for off, n in runs:
            done = 0
            while done < n:
                got = os.copy_file_range(src, dst, n - done, off + done, off + done)
                if got <= 0:
                    raise OSError(errno.EIO, "source shrank while copied")
                done += got
    except OSError as err:
        # Across file systems of different types copy_file_range(2) fails with EXDEV.
        if err.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        out = sparse.SparseWriter(dst)
        for off, n in runs:
            pos = off
            for piece in sparse.read_runs(src, [(off, n)]):
                out.write_at(pos, piece)
                pos += len(piece)
    os.ftruncate(dst, size)
