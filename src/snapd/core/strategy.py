"""Which copy path a dump takes, and how much staging it gets, chosen from measured rates.

The candidates (:mod:`snapd.core.calibrate` times each on the destination file system):

- ``direct``: staged chunks written with O_DIRECT by three writers (no page cache);
- ``buffered``: staged chunks written into the page cache by one writer;
- ``direct+buffered``: both at once from one queue, so the bytes split in proportion to how
  fast each drains (the disk bounds O_DIRECT, fresh-memory allocation bounds the page cache:
  different bottlenecks, so together they can beat either);
- ``mmap``: ``process_vm_readv`` straight into a mapping of the output file (no staging).

The fastest measured one wins; with ``sync`` (the daemon) buffered bytes must reach the disk
too before the core is published, so they count at most at the disk's O_DIRECT rate.

In frozen mode the reader fills staging chunks faulted in before the halt, and the target is
resumed as soon as everything has been read; the writers drain the rest after. The staging is
sized for the whole dump, capped by the budget (:func:`budget`: a quarter of MemAvailable unless
configured); of it only the head is faulted in before the halt: what the writers will not have
drained by the end of the read, ``D * (1 - W / R)`` for ``D`` bytes read at ``R`` and drained
at ``W`` beside the halted reader, both as the last big dump here measured them (the whole dump
until one has). The rest is faulted in on demand, only if the reader is about to run out
(pool.Pool). Beyond the budget the reader waits for free chunks, i.e. the remainder is copied
at the writers' speed while halted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from dataclasses import dataclass
from enum import Enum

from snapd import procfs
from snapd.content import ContentSpec, SnapshotMode
from snapd.core import calibrate, select
from snapd.core.calibrate import Calibration, Rates
from snapd.core.info import CopyReport
from snapd.core.pool import CHUNK, WARM_CHUNKS
from snapd.core.staging import Sink, Stats
from snapd.errors import SnapdError
from snapd.procfs import Mapping

WARM_ALL = WARM_CHUNKS * CHUNK  # a copy not sized in advance (a fork's child) gets them all
AUTO_FORK_MIN = 64 << 20  # "auto" forks targets with at least this much private memory to copy
DEFAULT_FILTER = 0x33  # the kernel's default coredump_filter
BUDGET_FRACTION = 0.25  # of MemAvailable, the default staging budget
PREFER = 1.25  # the mmap method must be this much faster than the staged one to be chosen
SPLIT_GAIN = 1.1  # O_DIRECT and buffered at once must beat O_DIRECT alone by this much
HEAD_SECONDS = 0.4  # at most this long faulting staging in before the halt
DEFAULT_POPULATE = 1e9  # bytes/s, where it was not measured
STAGE_GAIN = 1.25  # staging only if the reader is this much faster than the writers
MARGIN = 1.25  # staging beyond the bare formula: rates measured on tens of MiB are optimistic


class Method(str, Enum):
    DIRECT = "direct"
    BUFFERED = "buffered"
    SPLIT = "direct+buffered"
    MMAP = "mmap"


SINKS = {
    Method.DIRECT: (Sink.DIRECT, Sink.DIRECT, Sink.DIRECT),
    Method.BUFFERED: (Sink.BUFFERED,),
    Method.SPLIT: (Sink.DIRECT, Sink.DIRECT, Sink.BUFFERED),
    Method.MMAP: (),
}


class StrategyError(SnapdError):
    pass


@dataclass(frozen=True)
class Strategy:
    method: Method
    staging: int  # bytes of staging at most, beyond the warm chunks
    estimate: int  # bytes the dump is expected to copy (smaps before the halt)
    budget: int  # the staging cap
    predicted: float  # bytes/s the writers should drain at (0: unknown)
    calibration: Calibration | None
    why: str  # one line: what chose it
    frozen: bool = False  # copying from a halted target: buffered writers wait for the resume
    head: int = 0  # of the staging, bytes faulted in before the halt (the rest during it)
    predicted_seen: bool = False  # ``predicted`` is what a real dump did, not the calibration's

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return SINKS[self.method]

    @property
    def staged(self) -> bool:
        return self.method is not Method.MMAP


def rate_of(r: Rates, m: Method) -> float:
    return {Method.DIRECT: r.direct, Method.BUFFERED: r.buffered, Method.SPLIT: r.split, Method.MMAP: r.mmap}[
        m
    ]


def estimate(
    pid: int, pre: list[Mapping], spec: ContentSpec, filt: int, fork: bool, only_shared: bool = False
) -> int:
    """Bytes a dump will copy, from smaps read before the halt (resident anonymous memory,
    whole file mappings). In fork mode only what is copied while halted (from the parent);
    ``only_shared``: of shared mappings only."""
    total = 0
    for m in pre:
        if fork and not (m.vmflags & {"dc", "wf"} or (m.shared and spec.mentions("haltshared"))):
            continue
        if only_shared and not m.shared:
            continue
        cls = select.classify(pid, m, frozenset())
        amount = select.decide(spec, m, cls, filt, lambda _m: False)
        if amount == select.Amount.WHOLE:
            total += m.rss if not m.file_backed else m.size
    return total


def budget(value: str | int | None = None) -> int:
    """The staging budget in bytes: ``value`` (bytes, or "N%" of MemAvailable), else
    $SNAPD_STAGING_BUDGET, else a quarter of MemAvailable."""
    v = value if value is not None else os.environ.get("SNAPD_STAGING_BUDGET")
    avail = _mem_available()
    if v is None or v == "":
        return int(avail * BUDGET_FRACTION)
    if isinstance(v, int):
        return max(v, 0)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%|[kKmMgG]i?[bB]?)?\s*", v)
    if not m:
        raise StrategyError(
            f"staging budget '{v}': use bytes (e.g. 512M) or a percentage of MemAvailable (25%)"
        )
    n, unit = float(m.group(1)), (m.group(2) or "").lower()[:1]
    if unit == "%":
        return int(avail * n / 100)
    return int(n * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30


def choose(
    cal: Calibration | None,
    nbytes: int,
    *,
    frozen: bool,
    sync: bool,
    have_direct: bool,
    cap: int,
    force: str | None = None,
) -> Strategy:
    """The copy method and staging for a dump of about ``nbytes`` (``force``: a method name,
    from $SNAPD_COPY_METHOD or the caller, for comparisons)."""
    force = force or os.environ.get("SNAPD_COPY_METHOD") or None
    rates = cal.rates if cal else Rates()

    def measured(m: Method) -> float:
        # What a real dump here achieved with m lately, else the calibration's test of it. A
        # 64 MiB test write may find memory the hypervisor still backs and a 1 GiB dump not
        # (free-page reporting, mm/page_reporting.c); and the test is one moment of a disk whose
        # speed changes (0.3 GB/s in a test between two dumps at 0.8 and 1.6 GB/s).
        return (cal.seen(m.value) if cal else 0.0) or rate_of(rates, m)

    def rate(m: Method) -> float:
        r = measured(m)
        if sync and m is not Method.DIRECT and rates.direct:
            return min(r, measured(Method.DIRECT))  # the page cache is written back before publishing
        return r

    if force:
        try:
            method = Method(force)
        except ValueError:
            raise StrategyError(
                f"copy method '{force}': use one of {', '.join(m.value for m in Method)}"
            ) from None
        if method in (Method.DIRECT, Method.SPLIT) and not have_direct:
            method = Method.BUFFERED
        why = f"{method.value} (forced)"
    elif cal is None or not (rates.direct or rates.buffered):
        method = Method.DIRECT if have_direct else Method.BUFFERED
        why = f"{method.value} (not measured)"
    else:
        # The page cache alone is never chosen where O_DIRECT works: its speed is that of
        # fresh memory, which a test write of tens of MiB may find warm and a real dump cold.
        # Beside O_DIRECT it can only help: writers pull chunks as fast as each drains.
        direct = have_direct and rate(Method.DIRECT) > 0
        method = Method.DIRECT if direct else Method.BUFFERED
        why = f"{method.value} (fastest measured{', counting write-back for --sync' if sync else ''})"
        if direct and rate(Method.SPLIT) > SPLIT_GAIN * rate(Method.DIRECT):
            method = Method.SPLIT
            gain = rate(Method.SPLIT) / rate(Method.DIRECT)
            why = f"{method.value} (both at once measured {gain:.1f}x O_DIRECT alone)"
        if not frozen and rate(Method.MMAP) > PREFER * rate(method):
            method = Method.MMAP  # a fork's child or an unstaged copy: no staging to lose
            why = f"{method.value} (fastest measured)"
    # What the writers should drain at, as measured(): predicted from the test alone, a machine
    # whose test finds warm memory drifts at every dump, goes stale and makes the next dump
    # measure again before its halt (0.3-0.5 s), which measures the same and drifts again.
    predicted = rate(method)
    seen = cal.seen(method.value) if cal else 0.0
    memory = (cal.seen("memory") if cal else 0.0) or rates.memory
    staging = head = 0
    if frozen and method is not Method.MMAP:
        # While halted O_DIRECT writers run at the reader's priority; buffered ones only on
        # CPU time nobody wants (see priority.Nice), so they are not counted on.
        during = rates.direct if Sink.DIRECT in SINKS[method] else 0.0
        if memory and during and memory < STAGE_GAIN * during:
            why += "; no staging: the writers keep up with the reader"
        else:
            # The whole dump may be staged. Faulted in before the halt (the head): what the
            # writers will not have drained by the time the reader ends, at the rate they drained
            # beside a halted reader in the last big dump here (buffered ones included: that
            # dump measured what CPU time they got; none yet: all of it), and at most what
            # HEAD_SECONDS allow (it delays the halt: the moment the core shows). Any more only
            # when the reader is about to run out (see pool.Pool), which slows the reader:
            # faulting memory in competes with it for a CPU and for memory bandwidth.
            staging = staging_for(nbytes, 0.0, 0.0, cap)
            beside = cal.seen(halted_key(method)) if cal else 0.0
            need = staging_for(nbytes, memory, beside, cap) if beside and memory else staging
            # Faulting in as fast as it did in the last big dump here (the calibration's 64 MiB
            # may find memory the hypervisor still backs); Pool stops at HEAD_SECONDS anyway.
            populate = (cal.seen("populate") if cal else 0.0) or rates.populate or DEFAULT_POPULATE
            head = min(need, int(populate * HEAD_SECONDS) // CHUNK * CHUNK)
            head = _head_override(head, staging)
            if beside and memory:
                why += (
                    f"; {need >> 20} MiB staged before the halt: a dump here drained "
                    f"{beside / 1e6:,.0f} MB/s beside a reader at {memory / 1e6:,.0f} MB/s"
                )
    return Strategy(method, staging, nbytes, cap, predicted, cal, why, frozen, head, seen > 0)


def halted_key(method: Method) -> str:
    """The observation of how fast ``method``'s writers drained beside a halted reader."""
    return f"{method.value} halted"


def _head_override(head: int, staging: int) -> int:
    """$SNAPD_STAGING_HEAD (for comparisons): "all", or bytes faulted in before the halt."""
    v = os.environ.get("SNAPD_STAGING_HEAD", "")
    if v == "all":
        return staging
    if v.isdigit():
        return min(int(v), staging)
    return head


def staging_for(nbytes: int, read_rate: float, supply_rate: float, cap: int) -> int:
    """Staging so that a reader at ``read_rate`` never waits for chunks supplied at
    ``supply_rate``: what cannot be supplied while it reads (all of it if unknown)."""
    if nbytes <= 0:
        return 0
    # Unknown rates: stage it all.
    need = nbytes * max(0.0, 1.0 - supply_rate / read_rate) * MARGIN if read_rate > 0 else float(nbytes)
    need = min(need + CHUNK, nbytes) - WARM_CHUNKS * CHUNK  # the warm chunks are there anyway
    return max(0, min(int(need), cap)) // CHUNK * CHUNK


def prepare(
    pid: int,
    pre: list[Mapping] | None,
    spec: ContentSpec,
    directory: str,
    snapshot: SnapshotMode,
    *,
    sync: bool,
    have_direct: bool,
    cap: int,
    force: str | None,
    before_halt: bool,
) -> tuple[SnapshotMode, Strategy]:
    """The snapshot mode ("auto" resolved) and the copy strategy for it. ``before_halt``: the
    target still runs, so the calibration may be measured and staging faulted in (a target
    the caller halted already gets the cached calibration, or none, and no staging)."""
    filt = DEFAULT_FILTER
    with contextlib.suppress(SnapdError, ValueError):  # a dying target: the halt will say so
        filt = procfs.coredump_filter(pid)
    total = estimate(pid, pre, spec, filt, fork=False) if pre is not None else _rss(pid)
    early = estimate(pid, pre, spec, filt, fork=True) if pre is not None else 0
    shared = estimate(pid, pre, spec, filt, fork=False, only_shared=True) if pre is not None else 0
    mode = snapshot
    if snapshot is SnapshotMode.AUTO:
        # A fork's freeze grows with page tables, a frozen copy's with bytes: fork when there
        # are enough bytes. Shared memory does not count: a fork cannot snapshot it (it is
        # copied live from the child, or while halted with haltshared), so it gains nothing.
        mode = SnapshotMode.FORK if total - shared >= AUTO_FORK_MIN else SnapshotMode.FROZEN
    nbytes = early if mode is SnapshotMode.FORK else total
    cal = None
    with contextlib.suppress(OSError):
        cal = calibrate.get(directory, measure=before_halt)
    if not before_halt:
        cap = 0  # already halted: faulting staging in now would only lengthen the freeze
    strat = choose(
        cal,
        nbytes,
        frozen=mode is SnapshotMode.FROZEN,
        sync=sync,
        have_direct=have_direct,
        cap=cap,
        force=force,
    )
    return mode, strat


def _rss(pid: int) -> int:
    """Resident anonymous and shared memory (/proc/PID/status), when smaps was not read."""
    try:
        st = procfs.status(pid)
    except SnapdError:
        return 0
    kb = 0
    for k in ("RssAnon", "RssShmem"):
        with contextlib.suppress(ValueError, IndexError):
            kb += int(st.get(k, "0 kB").split()[0])
    return kb * 1024


def report(strat: Strategy, stats: Stats, drain_seconds: float, *, frozen: bool) -> CopyReport:
    """What the copy did, for CoreInfo; checks the calibration against what was observed."""
    cal = strat.calibration
    written = dict(stats.written or {})
    total = sum(written.values())
    observed = total / stats.write_seconds if stats.write_seconds > 0 else 0.0
    stale = ""
    beside = stats.drained_beside / stats.beside_seconds if stats.beside_seconds > 0 else 0.0
    if cal is not None and frozen and strat.staged:
        # A staged frozen copy keeps its writers busy from the first chunk to the last (the
        # reader, at memory speed, is faster than they are), so their rate is the method's.
        # Only a prediction the calibration made can show the calibration wrong: one from an
        # earlier dump is simply replaced by this one (a disk here wrote 0.8 then 1.6 GB/s in two
        # dumps a minute apart, and a 64 MiB test measured again then found 0.3 GB/s).
        predicted = 0.0 if strat.predicted_seen else strat.predicted
        seen = [calibrate.Observation(strat.method.value, observed, total, predicted)]
        # And the reader's own rate, waits for chunks left out, is this machine's memory speed
        # on a real target (the calibration's source may sit in a CPU cache).
        busy = stats.read_seconds - stats.waited_seconds
        if busy > 0:
            seen.append(calibrate.Observation("memory", stats.read_bytes / busy, stats.read_bytes))
        # And how fast the writers drained beside it, until it first waited for them: over
        # at least CHECK_MIN bytes, since over the first few chunks the writers are starting.
        if beside:
            seen.append(calibrate.Observation(halted_key(strat.method), beside, stats.drained_beside))
        # And how fast the head was faulted in before the halt, which sizes the next one's.
        if stats.head_seconds > 0:
            seen.append(
                calibrate.Observation("populate", stats.head_bytes / stats.head_seconds, stats.head_bytes)
            )
        stale = calibrate.observe_all(cal, seen)
    src = "none"
    if cal is not None:
        src = (
            f"{cal.source}, {_age(cal.age())} old"
            if cal.source != "measured"
            else f"measured in {cal.seconds * 1e3:.0f} ms"
        )
    return CopyReport(
        method=strat.method.value,
        why=strat.why,
        rates=dataclasses.asdict(cal.rates) if cal else {},
        calibration=src,
        staging_bytes=strat.staging,
        staging_head=stats.head_bytes if strat.staged else 0,
        head_seconds=stats.head_seconds if strat.staged else 0.0,
        staging_used=stats.staging_used,
        budget_bytes=strat.budget,
        estimate_bytes=strat.estimate,
        predicted_rate=strat.predicted,
        observed_rate=observed,
        read_seconds=stats.read_seconds,
        waited_seconds=stats.waited_seconds,
        beside_rate=beside,
        drain_seconds=drain_seconds,
        written=written,
        stale=stale,
    )


def _age(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
