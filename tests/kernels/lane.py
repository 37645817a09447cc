"""``make test-kernels``: the kernel-sensitive tests (marker ``lane``) on every kernel of a list.

Rows (docs/kernels.md):
- the running kernel, on this machine itself: it is the kernel under test, and a VM kernel often
  has no image on disk to boot (this one has no /boot/vmlinuz-RELEASE);
- each kernel that scripts/kernels.sh unpacked into .cache/kernels/RELEASE/ (Debian 12's 6.1),
  booted by virtme-ng under qemu with this machine's own userspace (the checkout, its .venv, gdb,
  bcc, the headers in /usr/src) mounted read-only, and .cache/kernels/results/ writable: pytest's
  JUnit XML and the feature report come back through it.

Acceleration: KVM only when a probe boot proves it works (nested KVM hangs or faults on some
hosts), else qemu's emulation (TCG); the answer is cached in .cache/kernels/accel.json and printed.
Deadlines: the guest times a fixed CPU-bound loop against the host's and exports the ratio (x2)
as SNAPD_TEST_TIMEOUT_SCALE, which the shared wait helpers apply (tests/snapd_testlib.py).

    .venv/bin/python -m tests.kernels.lane               # every row, then the table
    .venv/bin/python -m tests.kernels.lane --only 6.1.0-50-amd64 -- -k pages
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "kernels"
RESULTS = CACHE / "results"
ACCEL_CACHE = CACHE / "accel.json"
VENV_BIN = REPO / ".venv" / "bin"
KVM_TOKEN = "snapd-lane-kvm-ok"
KVM_PROBE_DEADLINE_S = 60.0
GUEST_MEMORY = "4G"
GUEST_CPUS = 2
#: the daemon-kill test's kills in the lane (24 by default: minutes under emulation)
LANE_KILLS = 6


# ---- the run inside a row -------------------------------------------------------------------


def speed_sample() -> float:
    """Seconds for a fixed CPU-bound loop (best of three): the host/guest speed ratio."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        n = 0
        for i in range(300_000):
            n += i * i % 7
        best = min(best, time.perf_counter() - t0)
    return best


def timeout_scale(host_s: float, here_s: float) -> float:
    """How much longer deadlines get here: twice the measured slow-down, at least 1."""
    return max(1.0, round(2.0 * here_s / host_s, 1)) if host_s > 0 else 1.0


def own_env() -> dict[str, str]:
    """This environment with this checkout's src/ first on the path: the lane tests the
    checkout it runs from, not the one the venv was installed from (its editable .pth)."""
    path = os.pathsep.join(x for x in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if x)
    return dict(os.environ, PYTHONPATH=path)


def lane_env(scale: float) -> dict[str, str]:
    env = own_env()
    env.update(
        SNAPD_REQUIRE_KERNEL="1",  # a skipped kernel test is a failure here too
        SNAPD_TEST_TIMEOUT_SCALE=str(scale),
        SNAPD_REL_KILLS=str(LANE_KILLS),
        PYTHONDONTWRITEBYTECODE="1",  # the checkout is read-only in a guest
    )
    return env


def lane_files() -> list[str]:
    """The test files that hold lane tests: collecting only them saves minutes in a slow guest."""
    tests = REPO / "tests"
    return sorted(str(p.relative_to(REPO)) for p in tests.rglob("test_*.py") if "mark.lane" in p.read_text())


def pytest_argv(xml: Path, extra: Sequence[str], ids: Sequence[str] = ()) -> list[str]:
    return [
        str(VENV_BIN / "python"),
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-m",
        "lane",
        "-v",
        "--tb=short",
        f"--junitxml={xml}",
        *(ids or lane_files()),
        *extra,
    ]


def lane_ids(extra: Sequence[str]) -> list[str]:
    """The lane tests' node ids, as this checkout's pytest collects them with ``extra``."""
    argv = [*pytest_argv(RESULTS / "collect.xml", extra), "--collect-only", "-qq"]  # -v -qq: ids
    out = subprocess.run(argv, cwd=REPO, env=own_env(), capture_output=True, text=True, check=False).stdout
    (RESULTS / "collect.xml").unlink(missing_ok=True)
    return [ln for ln in out.splitlines() if "::" in ln and not ln.startswith(" ")]


def split(ids: Sequence[str], jobs: int) -> list[list[str]]:
    """``jobs`` parts of about equal length, each file's tests spread over them (a file's
    tests cost alike: the daemon tests each compile the program set, the core tests do not)."""
    parts: list[list[str]] = [[] for _ in range(max(1, jobs))]
    for i, t in enumerate(ids):
        parts[i % len(parts)].append(t)
    return [p for p in parts if p]


def features_json() -> str:
    from snapd import kernel

    return json.dumps(kernel.summary(), indent=1)


def inside(xml: Path, host_s: float, extra: Sequence[str], ids_file: Path | None = None) -> int:
    """The guest's side: mounts, the speed-scaled deadlines, pytest, the feature report."""
    # bpffs: the daemon pins its stop record there, and refuses stop: kernel rules without it
    mounts = (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug"), ("bpf", "/sys/fs/bpf"))
    for fs, where in mounts:
        if subprocess.run(["mountpoint", "-q", where], check=False).returncode != 0:
            subprocess.run(["mount", "-t", fs, "nodev", where], check=False)
    scale = float(os.environ.get("SNAPD_TEST_TIMEOUT_SCALE") or timeout_scale(host_s, speed_sample()))
    print(f"lane: {os.uname().release}: deadlines x{scale}", flush=True)
    xml.with_suffix(".features.json").write_text(features_json())
    ids = ids_file.read_text().splitlines() if ids_file else []
    argv = pytest_argv(xml, extra, ids)
    return subprocess.run(argv, cwd=REPO, env=lane_env(scale), check=False).returncode


# ---- rows -----------------------------------------------------------------------------------


@dataclass
class Row:
    release: str
    where: str  # "host" or "guest (tcg)" / "guest (kvm)"
    xml: Path
    seconds: float = 0.0
    exit_code: int | None = None
    results: dict[str, str] = field(default_factory=dict)
    features: dict[str, str] = field(default_factory=dict)
    note: str = ""
    #: (JUnit XML, log) of each run that made the row: one, or one per guest of a split row
    parts: list[tuple[Path, Path]] = field(default_factory=list)


def guest_kernels() -> list[tuple[str, Path]]:
    """(release, vmlinuz) of every kernel scripts/kernels.sh unpacked."""
    out = []
    for d in sorted(CACHE.iterdir()) if CACHE.is_dir() else []:
        images = sorted((d / "boot").glob("vmlinuz-*"))
        if images and (d / "lib" / "modules").is_dir():
            out.append((images[0].name.removeprefix("vmlinuz-"), images[0]))
    return out


def default_jobs() -> int:
    """Guests at once under emulation: one per host CPU, no more than memory holds (each
    guest gets GUEST_MEMORY, and the host keeps a guest's worth for itself)."""
    avail = 0
    with contextlib.suppress(OSError, ValueError, StopIteration):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        avail = int(next(ln for ln in meminfo if ln.startswith("MemAvailable:")).split()[1]) * 1024
    per_guest = int(GUEST_MEMORY.removesuffix("G")) << 30
    by_memory = max(1, avail // per_guest - 1) if avail else 1
    return max(1, min(os.cpu_count() or 1, by_memory))


def _vng(vmlinuz: Path, command: str, kvm: bool, cpus: int = GUEST_CPUS) -> list[str]:
    argv = [str(VENV_BIN / "vng"), "--run", str(vmlinuz), "--memory", GUEST_MEMORY]
    argv += ["--cpus", str(cpus), "--rwdir", str(RESULTS), "--exec", command]
    return argv + ([] if kvm else ["--disable-kvm"])


def _run_streamed(argv: list[str], deadline_s: float, prefix: str, log: Path) -> tuple[int | None, str]:
    """Run argv in its own process group, echo its output with ``prefix``; kill the group (qemu
    included) at the deadline. Returns (exit code or None on timeout, output)."""
    env = dict(own_env(), PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    GROUPS.add(proc.pid)
    try:
        return _stream(proc, deadline_s, prefix, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the group may outlive the run
        proc.wait()
        GROUPS.discard(proc.pid)


def _stream(
    proc: subprocess.Popen[bytes], deadline_s: float, prefix: str, log: Path
) -> tuple[int | None, str]:
    assert proc.stdout is not None
    out: list[str] = []
    end = time.monotonic() + deadline_s
    buf = b""
    with log.open("wb") as logf, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None, "".join(out)  # the caller kills the group
            if not sel.select(min(left, 5.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            logf.write(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                out.append(line + "\n")
                if prefix:
                    print(f"{prefix}{line}", flush=True)
    return proc.wait(), "".join(out)


#: the process groups of the guests running now (each in its own session: a signal sent to the
#: lane does not reach them), killed when the lane is stopped (:func:`_on_stop`)
GROUPS: set[int] = set()


def _on_stop(signum: int, _frame: object) -> None:
    for pgid in list(GROUPS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def _accel_key() -> str:
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.split("\n")[0]
    cpu = next(
        (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), ""
    )
    return f"{os.uname().release} | {qemu} | {cpu.partition(':')[2].strip()}"


def choose_accel(vmlinuz: Path, fresh: bool = False) -> tuple[bool, str]:
    """(use KVM?, why). KVM only if a guest booted with it answers within the deadline."""
    key = _accel_key()
    cache: dict[str, dict[str, object]] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(ACCEL_CACHE.read_text())
    if not fresh and key in cache:
        c = cache[key]
        return bool(c["kvm"]), f"{c['why']} (cached in {ACCEL_CACHE.relative_to(REPO)})"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        kvm, why = False, "no usable /dev/kvm"
    else:
        t0 = time.monotonic()
        rc, out = _run_streamed(
            _vng(vmlinuz, f"echo {KVM_TOKEN}", kvm=True), KVM_PROBE_DEADLINE_S, "", RESULTS / "kvm-probe.log"
        )
        took = time.monotonic() - t0
        if rc == 0 and KVM_TOKEN in out:
            kvm, why = True, f"a KVM probe boot answered in {took:.0f} s"
        elif rc is None:
            kvm, why = False, f"a KVM probe boot gave no answer in {KVM_PROBE_DEADLINE_S:.0f} s"
        else:
            kvm, why = False, f"a KVM probe boot failed (exit {rc}: {out.strip()[-200:]!r})"
    cache[key] = {"kvm": kvm, "why": why}
    ACCEL_CACHE.write_text(json.dumps(cache, indent=1))
    return kvm, why


def run_host(extra: Sequence[str], host_s: float) -> Row:
    release = os.uname().release
    row = Row(release, "host", RESULTS / f"{release}.xml")
    print(f"\n=== {release} (the running kernel, on this machine)", flush=True)
    row.xml.with_suffix(".features.json").write_text(features_json())
    t0 = time.monotonic()
    log = RESULTS / f"{release}.log"
    rc, _ = _run_streamed(pytest_argv(row.xml, extra), 3600, f"[{release}] ", log)
    row.seconds, row.exit_code, row.parts = time.monotonic() - t0, rc, [(row.xml, log)]
    return row


def _guest_part(
    release: str,
    vmlinuz: Path,
    kvm: bool,
    cpus: int,
    part: tuple[int, list[str]] | None,
    extra: Sequence[str],
    host_s: float,
    deadline: float,
) -> tuple[Path, Path, int | None, float, str]:
    """One guest: (its JUnit XML, its log, exit code or None at the deadline, seconds, output).
    ``part``: (index, node ids) when the row's tests are split over several guests."""
    tag = release if part is None else f"{release}.{part[0]}"
    xml, log = RESULTS / f"{tag}.xml", RESULTS / f"{tag}.log"
    inner = [str(VENV_BIN / "python"), "-m", "tests.kernels.lane", "--inside", str(xml)]
    if part is not None:
        ids = RESULTS / f"{tag}.ids"
        ids.write_text("\n".join(part[1]) + "\n")
        inner += ["--ids", str(ids)]
    inner += ["--host-speed", f"{host_s:.6f}", "--", *extra]
    src = shlex.quote(str(REPO / "src"))
    command = f"cd {shlex.quote(str(REPO))} && PYTHONPATH={src} " + shlex.join(inner)
    t0 = time.monotonic()
    rc, out = _run_streamed(_vng(vmlinuz, command, kvm, cpus), deadline, f"[{tag}] ", log)
    return xml, log, rc, time.monotonic() - t0, out


def run_guest(
    release: str,
    vmlinuz: Path,
    kvm: bool,
    extra: Sequence[str],
    host_s: float,
    deadline: float,
    cpus: int = GUEST_CPUS,
    jobs: int = 1,
) -> Row:
    """The kernel's row: one guest, or ``jobs`` guests at once, each running a share of the
    tests (under emulation a guest's pytest keeps about one host CPU busy, whatever its CPUs)."""
    row = Row(release, f"guest ({'kvm' if kvm else 'tcg'})", RESULTS / f"{release}.xml")
    how = "KVM" if kvm else "emulated: TCG"
    parts: list[tuple[int, list[str]] | None] = [None]
    if jobs > 1:
        parts = list(enumerate(split(lane_ids(extra), jobs)))
    guests = f"{len(parts)} guest(s) of {cpus} CPU(s)"
    print(f"\n=== {release} (booted with virtme-ng, {how}; {guests})", flush=True)

    def one(part: tuple[int, list[str]] | None) -> tuple[Path, Path, int | None, float, str]:
        return _guest_part(release, vmlinuz, kvm, cpus, part, extra, host_s, deadline)

    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        runs = list(pool.map(one, parts))
    row.parts = [(xml, log) for xml, log, *_ in runs]
    codes = [rc for _x, _l, rc, _s, _o in runs]
    row.seconds = max(sec for *_, sec, _o in runs)
    row.exit_code = None if None in codes else next((c for c in codes if c), 0)  # a signal: < 0
    notes = []
    if None in codes:
        notes.append(f"killed at the {deadline:.0f} s deadline")
    scales = sorted({m.group(1) for *_, out in runs if (m := re.search(r"deadlines (x[\d.]+)", out))})
    if scales:
        notes.append("deadlines " + "/".join(scales))
    row.note = ", ".join(notes)
    return row


# ---- results --------------------------------------------------------------------------------


def read_junit(xml: Path) -> dict[str, str]:
    """test id -> pass / FAIL / ERROR / skip, from pytest's JUnit XML."""
    out: dict[str, str] = {}
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return out
    for tc in root.iter("testcase"):
        cls = tc.get("classname", "").removeprefix("tests.").replace(".", "/")
        key = f"{cls}.py::{tc.get('name', '')}"
        kinds = {child.tag for child in tc}
        out[key] = (
            "ERROR"
            if "error" in kinds
            else "FAIL"
            if "failure" in kinds
            else "skip"
            if "skipped" in kinds
            else "pass"
        )
    return out


_STREAMED = re.compile(r"^(?:\[[^]]*\] )?tests/(.+?) (PASSED|FAILED|ERROR|SKIPPED)\b", re.M)


def read_streamed(log: Path) -> dict[str, str]:
    """test id -> result from pytest's -v lines, for a run killed before it wrote its XML; the
    test it was in when killed is "killed"."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    words = {"PASSED": "pass", "FAILED": "FAIL", "ERROR": "ERROR", "SKIPPED": "skip"}
    out = {m.group(1): words[m.group(2)] for m in _STREAMED.finditer(text)}
    # (a guest killed mid-test may print more on the test's line: qemu's "terminating on signal")
    started = re.findall(r"^(?:\[[^]]*\] )?tests/(\S+::\S+)(?:\s|$)", text, re.M)
    for t in started:  # (\S+ cuts an id with spaces short: then it is a finished one's prefix)
        if not any(k.startswith(t) for k in out):
            out[t] = "killed"
    return out


def green(rows: Sequence[Row]) -> bool:
    tests = set().union(*(r.results for r in rows)) if rows else set()
    return bool(tests) and all(
        r.exit_code == 0 and set(r.results) == tests and all(v == "pass" for v in r.results.values())
        for r in rows
    )


def table(rows: Sequence[Row]) -> str:
    tests = sorted(set().union(*(r.results for r in rows))) if rows else []
    width = max([len("test"), *map(len, tests)])
    cols = [max(len(r.release), len(r.where), 12) for r in rows]
    lines = [
        "  ".join(["test".ljust(width), *(r.release.ljust(c) for r, c in zip(rows, cols, strict=True))]),
        "  ".join(["".ljust(width), *(r.where.ljust(c) for r, c in zip(rows, cols, strict=True))]),
    ]
    for t in tests:
        cells = [r.results.get(t, "-").ljust(c) for r, c in zip(rows, cols, strict=True)]
        lines.append("  ".join([t.ljust(width), *cells]))
    totals = []
    for r, c in zip(rows, cols, strict=True):
        ok = sum(v == "pass" for v in r.results.values())
        totals.append(f"{ok}/{len(tests)} {r.seconds:.0f}s".ljust(c))
    lines.append("  ".join(["passed, wall time".ljust(width), *totals]))
    return "\n".join(lines)


def feature_lines(rows: Sequence[Row]) -> list[str]:
    out = []
    for r in rows:
        odd = {k: v for k, v in r.features.items() if k != "release" and v != "yes"}
        shown = "; ".join(f"{k}: {v}" for k, v in odd.items()) or "every feature snapd uses is present"
        out.append(f"  {r.release}: {shown}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.kernels.lane", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], help="run only this kernel release (repeatable)")
    p.add_argument("--deadline", type=float, default=7200.0, help="seconds allowed per guest (default 7200)")
    p.add_argument(
        "--cpus",
        type=int,
        default=0,
        help=f"CPUs per guest (default: {GUEST_CPUS} under KVM, 1 under emulation, where a guest's"
        " pytest keeps about one host CPU busy whatever it has)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="guests per kernel, each running a share of the tests (default: 1 under KVM; under"
        " emulation one per host CPU, as memory allows)",
    )
    p.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--fresh-accel", action="store_true", help="probe KVM again instead of the cached answer")
    p.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--host-speed", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)
    if args.inside:
        return inside(args.inside, args.host_speed, args.pytest_args, args.ids)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_stop)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for old in [*RESULTS.glob("*.xml"), *RESULTS.glob("*.ids")]:
        old.unlink()
    host_s = speed_sample()
    rows: list[Row] = []
    running = os.uname().release
    if not args.only or running in args.only:
        rows.append(run_host(args.pytest_args, host_s))
    guests = [(r, k) for r, k in guest_kernels() if r != running and (not args.only or r in args.only)]
    if guests:
        if not shutil.which("qemu-system-x86_64") or not (VENV_BIN / "vng").exists():
            print("lane: qemu or virtme-ng missing: run scripts/kernels.sh (make test-kernels does)")
            return 2
        kvm, why = choose_accel(guests[0][1], args.fresh_accel)
        print(f"lane: acceleration: {'KVM' if kvm else 'TCG (emulation)'}: {why}", flush=True)
        cpus = args.cpus or (GUEST_CPUS if kvm else 1)
        jobs = args.jobs or (1 if kvm else default_jobs())
        for release, vmlinuz in guests:
            rows.append(run_guest(release, vmlinuz, kvm, args.pytest_args, host_s, args.deadline, cpus, jobs))
    elif not args.only:
        print("lane: no guest kernels in .cache/kernels (scripts/kernels.sh fetches them)")
    for r in rows:
        for xml, log in r.parts:
            r.results.update(read_junit(xml) or read_streamed(log))
        with contextlib.suppress(OSError, ValueError, IndexError):
            r.features = json.loads(r.parts[0][0].with_suffix(".features.json").read_text())
    print("\n" + table(rows))
    print("\nkernel features that differ from 'present':")
    print("\n".join(feature_lines(rows)))
    for r in rows:
        logs = ", ".join(str(log.relative_to(REPO)) for _xml, log in r.parts)
        print(f"  {r.release}: {r.where}, exit {r.exit_code}{', ' + r.note if r.note else ''}; log: {logs}")
    ok = green(rows)
    print(f"\nlane: {'GREEN' if ok else 'NOT GREEN'}: {len(rows)} kernels")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
