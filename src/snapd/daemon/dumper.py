"""The dumper: the process that does every halt and dump for the daemon, and outlives it.

A tracer that dies while a call is injected into its target leaves the target's thread running
from the injected state (snapd.freeze.inject); SIGKILL cannot be held off. So the daemon, which
can be killed at any instant (OOM killer, kill -9, a crash), never traces anything: this
process, started by the daemon and as long-lived (its copy buffers stay warm), takes jobs and
answers with results, one JSON object per line on a socketpair.

It ignores SIGINT, SIGTERM and SIGHUP (held for its whole life) and asks the kernel to spare it
under memory pressure (oom_score_adj -1000): the one way to end it is its end of the socket
closing. Then, whether the daemon stopped or died, it finishes the dump in hand (so the target
is resumed, the snapshot child killed and reaped), and exits. It holds the daemon's
``dumper.lock`` (inherited), so a restarted daemon waits for an orphaned dumper to finish.

Should it die itself during a fork snapshot, the snapshot child dies with it (PTRACE_O_EXITKILL)
but stays a zombie of the target; ``dumper.inflight`` names the target, and the next dumper
makes it reap the zombie (an injected wait4).

Messages, daemon -> dumper: ``{"job": {...}}``; dumper -> daemon: ``{"ready": PID}``,
``{"stop_cleared": PID}`` (a probe-stopped target is ours now, or gone), ``{"result": {...}}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from snapd import procfs
from snapd.atomicfile import write_atomic
from snapd.content import SnapshotMode, parse_spec
from snapd.core import write_core
from snapd.daemon.logsetup import configure
from snapd.errors import SnapdError
from snapd.freeze import halt, inject

log = logging.getLogger("snapd")

INFLIGHT = "dumper.inflight"  # in the state dir: the target of a fork snapshot in progress
HOLD_ENV = "SNAPD_TEST_HOLD"  # tests: "clone:DIR" or "copy:DIR" (see _hold)
HOLD_S = 120.0


def _oom_protect() -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError as err:  # lowering it needs CAP_SYS_RESOURCE (the unit sets it instead)
        log.debug("dumper: oom_score_adj -1000 refused: %s", err.strerror)


def _hold(directory: str) -> None:
    """Tests: write DIR/held, then wait (bounded) for DIR/release."""
    write_atomic(os.path.join(directory, "held"), f"{os.getpid()}\n".encode(), sync=False)
    end = time.monotonic() + HOLD_S
    while not os.path.exists(os.path.join(directory, "release")) and time.monotonic() < end:
        time.sleep(0.01)


def _test_hold() -> tuple[str, str]:
    """$SNAPD_TEST_HOLD: tests pause the dumper at one moment of a dump: ``clone:DIR`` inside
    every injected clone (the target's thread holding our registers), ``copy:DIR`` at the first
    bytes copied (a fork snapshot's child alive)."""
    where, _, directory = os.environ.get(HOLD_ENV, "").partition(":")
    if where == "clone" and directory:

        def in_clone(tid: int, nr: int) -> None:
            if nr == inject.NR_CLONE:
                _hold(directory)

        inject.on_call_entered = in_clone
    return where, directory


def reap_leftovers(state_dir: str) -> int:
    """A previous dumper died during a fork snapshot: have its target reap the snapshot child
    it left as a zombie (clone exit signal 0: invisible to the target's own wait()). Returns
    the number reaped."""
    path = os.path.join(state_dir, INFLIGHT)
    try:
        with open(path) as f:
            rec = json.load(f)
        target, start = int(rec["target"]), int(rec["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    reaped = 0
    try:
        if procfs.stat(target).starttime == start:
            reaped = _reap_zombies_of(target)
    except SnapdError:
        pass
    with contextlib.suppress(OSError):
        os.unlink(path)
    return reaped


def _reap_zombies_of(target: int) -> int:
    from snapd.core.fork import reap_orphans

    return reap_orphans(target)


class Dumper:
    def __init__(self, sock: socket.socket, state_dir: str, hold_copy: str = "") -> None:
        self.sock = sock
        self.state_dir = state_dir
        self.rfile = sock.makefile("rb")
        self.hold_copy = hold_copy

    def send(self, msg: dict[str, Any]) -> None:
        # The daemon may be gone: the dump was still finished; nobody will record it.
        with contextlib.suppress(OSError):
            self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def _lines(self) -> Iterator[bytes]:
        while True:
            try:
                line = self.rfile.readline()
            except OSError:  # ECONNRESET: the daemon died with our last result unread
                return
            if not line:
                return
            yield line

    def run(self) -> int:
        self.send({"ready": os.getpid()})
        for line in self._lines():
            try:
                msg = json.loads(line)
                job = msg["job"]
            except (ValueError, KeyError, TypeError):
                log.error("dumper: bad message from the daemon: %r", line[:200])
                continue
            self.send({"result": self.dump(job)})
        return 0  # EOF: the daemon stopped or died; the dump in hand, if any, is done

    def _mark_inflight(self, pid: int) -> bool:
        try:
            start = procfs.stat(pid).starttime
            data = json.dumps({"target": pid, "start": start}).encode()
            write_atomic(os.path.join(self.state_dir, INFLIGHT), data, sync=False)
        except (SnapdError, OSError):
            return False
        return True

    def dump(self, job: dict[str, Any]) -> dict[str, Any]:
        entry_id, pid = int(job["id"]), int(job["pid"])
        out: dict[str, Any] = {"id": entry_id, "info": None, "error": ""}
        fork = job["mode"] == SnapshotMode.FORK.value
        marked = fork and self._mark_inflight(pid)
        try:
            halted = None
            if job.get("kernel_stopped"):
                # Take over the SIGSTOP'd target with ptrace, then lift the job-control stop:
                # its threads stay in our ptrace-stop, and SIGCONT is simply pending until we
                # resume them (kernel/signal.c prepare_signal wakes only TASK_STOPPED tasks).
                try:
                    halted = halt(pid)
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                    self.send({"stop_cleared": pid})
            held = [not self.hold_copy]

            def progress(done: int, total: int) -> None:
                if not held[0]:
                    held[0] = True
                    _hold(self.hold_copy)

            info = write_core(
                pid,
                job["path"],
                content=parse_spec(job["content"]),
                snapshot=SnapshotMode(job["mode"]),
                replace=False,
                current_tid=job.get("tid"),
                halted=halted,
                progress=progress if self.hold_copy else None,
                sync=True,
            )
            out["info"] = info.to_dict()
        except SnapdError as err:
            out["error"] = str(err)
        except Exception as err:  # never let one bad dump end the dumper
            log.exception("dumper: dump of pid %d failed unexpectedly", pid)
            out["error"] = f"internal error: {err}"
        finally:
            if marked:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.state_dir, INFLIGHT))
        return out


def _calibrate(calibrate: Any, cores_dir: str) -> None:
    """The cores directory's copy rates, measured now (or read from the cache) rather than by
    the first dump, whose event waits for it; logged, since the copy method follows from them."""
    try:
        os.makedirs(cores_dir, mode=0o700, exist_ok=True)
        cal = calibrate.get(cores_dir)
    except (OSError, ValueError) as err:
        log.warning("dumper: cannot measure the copy rates of %s (%s): each dump measures", cores_dir, err)
        return
    if cal is None:
        return
    r = cal.rates
    log.info(
        "dumper: %s (%s, %s): O_DIRECT %.0f MB/s, buffered %.0f MB/s, memory %.0f MB/s",
        cores_dir,
        cal.fstype or "?",
        f"measured in {cal.seconds:.1f} s" if cal.source == "measured" else "cached",
        r.direct / 1e6,
        r.buffered / 1e6,
        r.memory / 1e6,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="snapd-dumper", description="snapd's dumps (the daemon starts it)")
    p.add_argument("--fd", type=int, required=True, help="the socket to the daemon")
    p.add_argument("--state", required=True, help="the daemon's state directory")
    args = p.parse_args(argv)
    # Held for good, before any thread exists: only EOF on the socket ends us (see above).
    signal.pthread_sigmask(signal.SIG_BLOCK, inject.HELD_SIGNALS)
    configure(sys.stderr)
    _oom_protect()
    where, hold_dir = _test_hold()
    from snapd.core import calibrate
    from snapd.core.pool import warm

    warm(0)  # the copy buffers every dump uses, faulted in once, before any target is halted
    _calibrate(calibrate, os.path.join(args.state, "cores"))
    n = reap_leftovers(args.state)
    if n:
        log.warning("dumper: reaped %d snapshot child(ren) a killed dumper left as zombies", n)
    sock = socket.socket(fileno=args.fd)
    return Dumper(sock, args.state, hold_dir if where == "copy" else "").run()


if __name__ == "__main__":
    raise SystemExit(main())
