"""How fast this machine copies a core out, measured on the destination file system.

Copy speeds differ 10x between machines of the same kind (O_DIRECT 366 MB/s..3.7 GB/s; a fresh
page-cache page 0.2-2.4 GB/s, depending on whether the hypervisor still backs freed guest memory:
virtio-balloon free-page reporting, mm/page_reporting.c), so the writer measures instead of
assuming. A calibration writes a few tens of MiB into sparse temp files in the destination
directory with each candidate sink, times them, and removes the files; it is bounded (well
under a second) and never runs while a target is halted. The answer is cached per file system
(its st_dev, type and f_fsid) with a timestamp in ``calibration.json`` under the cache
directory, and measured again when it is older than :data:`MAX_AGE` or a real dump's throughput
disagreed with it (:func:`check`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from snapd.core.memory import VmReader, copy_runs, open_direct
from snapd.core.pool import CHUNK, Pool, Region
from snapd.core.priority import boost
from snapd.core.staging import Copier, Sink
from snapd.sys.fs import fallocate

VERSION = 1
MAX_AGE = 24 * 3600.0  # seconds
SAMPLE = 64 << 20  # bytes written per candidate (less, if it takes longer than TIME_LIMIT)
MIN_SAMPLE = 4 << 20
TIME_LIMIT = 0.1  # seconds per candidate, then it is timed on what it wrote so far
DRIFT = 2.0  # a dump this many times slower or faster than predicted makes the entry stale
CHECK_MIN = 64 << 20  # dumps smaller than this say nothing about throughput
NOTE = 1.5  # an observed rate this many times off the remembered one is written down
REFRESH = 3600.0  # seconds: a remembered observation older than this is written down again
PARTIAL = ".snapd-partial.calibrate."  # removed by whoever cleans partial cores
CACHE_NAME = "calibration.json"
MAX_ENTRIES = 32  # file systems remembered
KEEP_FOR = 7 * 24 * 3600.0  # seconds an entry is remembered (it is used stale only while halted)

_lock = threading.Lock()
_memo: dict[str, Calibration] = {}  # for a cache directory that cannot be written


@dataclass(frozen=True)
class Rates:
    """Bytes per second; 0 where the candidate does not work on this file system."""

    memory: float = 0.0  # process_vm_readv into warm memory: how fast a halt can be copied out
    populate: float = 0.0  # faulting in fresh anonymous memory (the staging, before the halt)
    direct: float = 0.0  # O_DIRECT pwrite from warm memory, three writers
    buffered: float = 0.0  # pwrite from warm memory into new page-cache pages
    split: float = 0.0  # two O_DIRECT writers and one buffered writer at once, from one queue
    mmap: float = 0.0  # process_vm_readv straight into a MAP_SHARED mapping of a new file


@dataclass(frozen=True)
class Calibration:
    key: str
    fstype: str
    rates: Rates
    measured_at: float  # time.time()
    seconds: float  # how long measuring took
    stale: str = ""  # why it must be measured again, if it must
    #: method -> (bytes/s, bytes, time.time()) of the last big real dump that used it
    observed: dict[str, tuple[float, int, float]] = field(default_factory=dict)
    source: str = field(default="measured", compare=False)  # measured | cache | memory | none

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.measured_at

    def seen(self, method: str, now: float | None = None) -> float:
        """The rate a real dump achieved with ``method`` lately (0: none, or too old)."""
        o = self.observed.get(method)
        if not o or (now if now is not None else time.time()) - o[2] > MAX_AGE:
            return 0.0
        return o[0]

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("source")
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Calibration:
        rates = d.get("rates")
        if not isinstance(rates, dict):
            raise ValueError("no rates")
        return cls(
            key=str(d["key"]),
            fstype=str(d.get("fstype", "")),
            rates=Rates(**{k: float(v) for k, v in rates.items() if k in Rates.__dataclass_fields__}),
            measured_at=float(str(d["measured_at"])),
            seconds=float(str(d.get("seconds", 0.0))),
            stale=str(d.get("stale", "")),
            observed=_observed(d.get("observed")),
            source="cache",
        )


def _observed(d: object) -> dict[str, tuple[float, int, float]]:
    out: dict[str, tuple[float, int, float]] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            with contextlib.suppress(ValueError, TypeError):
                rate, n, at = v
                out[str(k)] = (float(rate), int(n), float(at))
    return out


def default_cache_dir() -> Path:
    """$SNAPD_CACHE_DIR, else /var/cache/snapd-cores for root, else $XDG_CACHE_HOME/snapd."""
    env = os.environ.get("SNAPD_CACHE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/snapd-cores")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "snapd"


def fs_key(directory: str) -> tuple[str, str]:
    """(key, fs type) of the file system holding ``directory``."""
    st = os.stat(directory)
    fsid = os.statvfs(directory).f_fsid
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    return f"{major}:{minor}:{_fstype(major, minor)}:{fsid:x}", _fstype(major, minor)


def _fstype(major: int, minor: int) -> str:
    """The type column of /proc/self/mountinfo for this device (proc(5))."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 2 and fields[2] == f"{major}:{minor}" and right:
                return right.split()[0]
    return "unknown"


def get(directory: str, *, measure: bool = True, cache_dir: Path | None = None) -> Calibration | None:
    """The calibration for ``directory``'s file system: cached if fresh, else measured now
    (only if ``measure``: never while a target is halted). None if neither is possible."""
    key, fstype = fs_key(directory)
    cdir = cache_dir or default_cache_dir()
    with _lock:
        cached = _load(cdir).get(key) or _memo.get(f"{cdir}:{key}")
        if cached and not cached.stale and cached.age() < MAX_AGE:
            return cached
        if not measure:
            return cached  # stale is better than nothing while halted
        cal = measure_dir(directory, key, fstype)
        if cached:
            cal = replace(cal, observed=cached.observed)
        if not _store(cdir, cal):
            cal = replace(cal, source="memory")
            _memo[f"{cdir}:{key}"] = cal
        return cal


@dataclass(frozen=True)
class Observation:
    """What a real dump achieved with ``method`` (bytes/s over ``nbytes``), against the rate
    it was chosen on (``predicted``; 0: none)."""

    method: str
    observed: float
    nbytes: int
    predicted: float = 0.0


def observe_all(cal: Calibration, seen: list[Observation], cache_dir: Path | None = None) -> str:
    """Record what a real dump achieved: from then on it is what each method is expected to do
    here (a calibration writes tens of MiB, which may fit in memory the hypervisor still
    backs; a real dump may not). One more than :data:`DRIFT` times off its prediction marks
    the entry stale, to be measured again before the next dump. Returns that drift, if any.

    The cache file is rewritten only when that changes what is known: a drift, a method not
    seen lately (:data:`REFRESH`), or a rate :data:`NOTE` times off the one remembered. A
    rewrite replaces the old file, and freeing its blocks right after a dump waited 0.1-0.9 s
    for the journal here (ext4, `discard`), at the end of every dump that did it."""
    now = time.time()
    useful = [o for o in seen if o.nbytes >= CHECK_MIN and o.observed > 0]
    if not useful or cal.source == "none":
        return ""
    why = ""
    for o in useful:
        if o.predicted > 0 and not 1 / DRIFT <= o.observed / o.predicted <= DRIFT and not why:
            why = (
                f"a {o.nbytes >> 20} MiB dump wrote at {o.observed / 1e6:.0f} MB/s, "
                f"predicted {o.predicted / 1e6:.0f}"
            )
    new = {o.method: (o.observed, o.nbytes, now) for o in useful}

    def news(cur: Calibration) -> bool:
        if why and not cur.stale:
            return True
        for m, (rate, _, _) in new.items():
            old = cur.observed.get(m)
            if old is None or now - old[2] > REFRESH or not 1 / NOTE <= rate / old[0] <= NOTE:
                return True
        return False

    cdir = cache_dir or default_cache_dir()
    with _lock:
        key = f"{cdir}:{cal.key}"
        cur = _load(cdir).get(cal.key)
        if cur is not None and news(cur):
            _store(cdir, replace(cur, stale=why or cur.stale, observed={**cur.observed, **new}))
        memo = _memo.get(key)
        if memo is not None:
            _memo[key] = replace(memo, stale=why or memo.stale, observed={**memo.observed, **new})
    return why


def _load(cdir: Path) -> dict[str, Calibration]:
    try:
        data = json.loads((cdir / CACHE_NAME).read_text())
        entries = data["filesystems"] if data.get("version") == VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    out = {}
    for key, d in entries.items() if isinstance(entries, dict) else ():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out[key] = Calibration.from_json(d)
    return out


def _store(cdir: Path, cal: Calibration) -> bool:
    """Add or replace one entry, atomically (temp file, rename). False if it cannot be written."""
    try:
        cdir.mkdir(parents=True, exist_ok=True, mode=0o755)
        entries = _load(cdir)
        entries[cal.key] = cal
        # One entry per file system ever measured (each tmpfs mount is a new one): the newest
        # MAX_ENTRIES are kept, none older than KEEP_FOR.
        fresh = sorted(
            (c for c in entries.values() if c.age() < KEEP_FOR or c.key == cal.key),
            key=lambda c: c.measured_at,
        )
        entries = {c.key: c for c in fresh[-MAX_ENTRIES:]}
        entries[cal.key] = cal
        doc = {"version": VERSION, "filesystems": {k: c.to_json() for k, c in sorted(entries.items())}}
        tmp = cdir / f".{CACHE_NAME}.{os.urandom(4).hex()}"
        try:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, cdir / CACHE_NAME)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except OSError:
        return False
    return True


# --- measuring ---------------------------------------------------------------------------------


def measure_dir(directory: str, key: str = "", fstype: str = "") -> Calibration:
    """Time every candidate on ``directory``'s file system (a few tens of MiB, < 1 s)."""
    if not key:
        key, fstype = fs_key(directory)
    t0 = time.monotonic()
    st = os.statvfs(directory)
    # Four test files exist at once: together at most an eighth of the free space.
    size = min(SAMPLE, st.f_bavail * st.f_frsize // 32) // CHUNK * CHUNK
    files: list[_TempFile] = []
    t = time.monotonic()
    src = Region(max(size, CHUNK))
    populate = src.size / max(time.monotonic() - t, 1e-6)
    try:
        pattern = bytes(range(256)) * (CHUNK // 256)  # not zeros: nothing may special-case them
        for addr in src.chunks():
            ctypes.memmove(addr, pattern, CHUNK)
        with Pool() as pool:
            rates = Rates(memory=_memory(src, pool.chunks), populate=populate)
        if size >= MIN_SAMPLE:
            # Each candidate gets a new file and keeps it until the end, so that none of
            # them writes into page-cache pages another one has just freed.
            chunks = src.chunks()
            direct = _drain(directory, files, chunks, (Sink.DIRECT,) * 3)
            buffered = _drain(directory, files, chunks, (Sink.BUFFERED,))
            split = _drain(directory, files, chunks, (Sink.DIRECT, Sink.DIRECT, Sink.BUFFERED))
            mmap = _mapped(directory, files, src)
            rates = replace(rates, direct=direct, buffered=buffered, split=split, mmap=mmap)
    finally:
        for f in files:
            f.close()
        src.close()
    return Calibration(key, fstype, rates, time.time(), time.monotonic() - t0)


def _memory(src: Region, dst: list[int]) -> float:
    """process_vm_readv of our own memory into warm memory: the reader's ceiling. Timed at the
    priority a real copy runs at while a target is halted (:func:`priority.boost`); the best of
    a few passes, since what is wanted is what the copy can do, not what else the CPUs do."""
    reader = VmReader(os.getpid())
    best = 0.0
    nice = boost()
    try:
        end = time.monotonic() + 0.05
        while time.monotonic() < end:
            t = time.monotonic()
            n = sum(reader.copy([(dst[i % len(dst)], a, CHUNK)]) for i, a in enumerate(src.chunks()))
            best = max(best, n / max(time.monotonic() - t, 1e-6))
    finally:
        nice.stop()
    return best


class _TempFile:
    def __init__(self, directory: str, size: int) -> None:
        self.path = os.path.join(directory, f"{PARTIAL}{os.urandom(4).hex()}")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.path, flags, 0o600)
        self.dfd: int | None = None
        try:
            os.ftruncate(self.fd, size)
            with contextlib.suppress(OSError):
                fallocate(self.fd, 0, size)  # as a dump does: blocks reserved before copying
            self.dfd = open_direct(self.path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        if self.dfd is not None:
            os.close(self.dfd)


def _drain(directory: str, files: list[_TempFile], chunks: list[int], sinks: tuple[Sink, ...]) -> float:
    """How fast ``sinks`` write out filled chunks (the reader is not timed: :func:`_memory`)."""
    try:
        f = _TempFile(directory, len(chunks) * CHUNK)
    except OSError:
        return 0.0
    files.append(f)
    if Sink.DIRECT in sinks and f.dfd is None:
        return 0.0
    with Pool() as pool:
        copier = Copier(f.fd, f.dfd, sinks, pool)
        try:
            for i, c in enumerate(chunks):
                copier.put(c, [(i * CHUNK, 0, CHUNK)])
            copier.wait(TIME_LIMIT)
        finally:
            copier.close()
    stats = copier.stats
    written = stats.written or {}
    if Sink.DIRECT in sinks and not written.get(Sink.DIRECT.value):
        return 0.0  # O_DIRECT opened, but the file system refused every write
    return sum(written.values()) / stats.write_seconds if stats.write_seconds > 0 else 0.0


def _mapped(directory: str, files: list[_TempFile], src: Region) -> float:
    try:
        f = _TempFile(directory, src.size)
        files.append(f)
        reader = VmReader(os.getpid())
        t = time.monotonic()
        n = 0
        for i, addr in enumerate(src.chunks()):
            n += copy_runs(reader, f.fd, [(i * CHUNK, addr, CHUNK)], fallback=False).copied
            if time.monotonic() - t > TIME_LIMIT:
                break
        return n / max(time.monotonic() - t, 1e-6)
    except OSError:
        return 0.0
