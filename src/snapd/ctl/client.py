"""``snapd ctl [--socket PATH] COMMAND``: talk to a running daemon.

Every string that a target chose (comm, exe, cmdline, file names) is printed through
:func:`safe`, so a process named ``"\\x1b]0;pwned\\x07"`` or ``"a\\nb"`` cannot forge lines or
drive the operator's terminal.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from snapd.ctl import reportview
from snapd.ctl.protocol import DEFAULT_GROUP, MAX_REPLY, CtlError, request
from snapd.ctl.rulesview import format_rules
from snapd.ctl.table import format_table
from snapd.errors import SnapdError
from snapd.paths import DEFAULT_SOCKET
from snapd.store.retention import parse_age
from snapd.text import safe

_REL = re.compile(r"^\s*\d+(?:\.\d+)?\s*(sec|min|s|m|h|d|w)(\s+\d+(?:\.\d+)?\s*(sec|min|s|m|h|d|w))*\s*$")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return str(n)  # pragma: no cover


def parse_since(text: str, now: float | None = None) -> float:
    """``1h``/``30min``/``2d`` (that long ago), ISO 8601 (``2026-11-27``, ``2026-11-27T01:00Z``;
    without a zone: local time), or ``@UNIXTIME``."""
    now = time.time() if now is None else now
    s = text.strip()
    if s.startswith("@"):
        try:
            return float(s[1:])
        except ValueError:
            pass
    elif _REL.match(s):
        return now - parse_age(s)
    else:
        try:
            d = _dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace(" ", "T"))
            return d.timestamp()  # naive: local time, like coredumpctl --since
        except ValueError:
            pass
    raise CtlError(f"--since {text!r}: use e.g. 2h, 1d, 2026-11-27T01:00Z or @UNIXTIME")


class Client:
    """One connection to the daemon; :meth:`call` sends a request and returns its result."""

    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except FileNotFoundError as err:
            self.sock.close()
            raise CtlError(
                f"{path}: no daemon socket there (is snapd-cores.service running? or pass --socket)"
            ) from err
        except PermissionError as err:
            self.sock.close()
            raise CtlError(
                f"{path}: permission denied: run as root, or join group '{DEFAULT_GROUP}' to read"
            ) from err
        except ConnectionRefusedError as err:
            self.sock.close()
            raise CtlError(f"{path}: no daemon is listening (a stale socket?)") from err
        except OSError as err:
            self.sock.close()
            raise CtlError(f"{path}: cannot connect: {err.strerror or err}") from err
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, cmd: str, **args: Any) -> Any:
        try:
            self.sock.sendall(request(cmd, **args))
            while b"\n" not in self._buf:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                self._buf += chunk
                if len(self._buf) > MAX_REPLY:
                    raise CtlError(f"{self.path}: reply larger than {MAX_REPLY} bytes")
        except TimeoutError as err:
            raise CtlError(f"{self.path}: the daemon did not answer in time (--timeout)") from err
        except OSError as err:
            if not self._buf:
                raise CtlError(f"{self.path}: connection failed: {err.strerror or err}") from err
        line, _, self._buf = self._buf.partition(b"\n")
        if not line:
            raise CtlError(f"{self.path}: the daemon closed the connection without a reply")
        try:
            reply = json.loads(line)
        except ValueError as err:
            raise CtlError(f"{self.path}: unreadable reply from the daemon") from err
        if not reply.get("ok"):
            raise CtlError(str(reply.get("error", "request failed")), str(reply.get("code", "failed")))
        return reply.get("result")


# -- output -------------------------------------------------------------------------------------

_LIST_COLUMNS = ("ID", "TIME", "PID", "UID", "RULE", "COMM", "SIZE", "STATUS", "WHERE", "EXE")


def upload_word(up: dict[str, Any] | None) -> str:
    """One word for the UPLOAD column: queued, queued (retry 3), uploaded, failed."""
    if not up:
        return "-"
    state = str(up.get("state", ""))
    if state == "queued" and int(up.get("attempts") or 0):
        return f"queued (retry {int(up['attempts'])})"
    return "failed" if state.startswith("failed") else state


def iso_of(when: float) -> str:
    return (
        _dt.datetime.fromtimestamp(when, _dt.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def _short_time(iso: str) -> str:
    return safe(iso[:19].replace("T", " ") + ("Z" if iso.endswith("Z") else ""))


def format_cores(cores: Sequence[dict[str, Any]]) -> str:
    """The list-cores table; an UPLOAD column (before EXE) when some core has an upload."""
    uploads = any(c.get("upload") for c in cores)
    rows: list[tuple[str, ...]] = []
    for c in cores:
        status = str(c.get("status", ""))
        row: tuple[str, ...] = (
            str(c.get("id", "")),
            _short_time(str(c.get("time", ""))),
            str(c.get("pid", "")),
            str(c.get("uid", "")),
            safe(c.get("rule", ""))[:32],
            safe(c.get("comm", "")),
            human_size(int(c.get("disk_bytes", 0) or 0)) if status == "complete" else "-",
            safe(status if len(status) <= 40 else status[:39] + "…"),
            reportview.where_cell(c) if status == "complete" else "-",
            safe(c.get("exe", "")),
        )
        if uploads:
            row = (*row[:-1], upload_word(c.get("upload")), row[-1])
        rows.append(row)
    header = (*_LIST_COLUMNS[:-1], "UPLOAD", _LIST_COLUMNS[-1]) if uploads else _LIST_COLUMNS
    return format_table(rows, header)


def _sent_by(trigger: object) -> list[str]:
    """A signal event's sender, as a line of its own (the answer to "who killed it?")."""
    snd = trigger.get("sender") if isinstance(trigger, dict) else None
    if not isinstance(snd, dict):
        return []
    return [
        f"      Sent by: pid {snd.get('pid')} ({safe(str(snd.get('comm', '')))}) uid {snd.get('uid')},"
        f" {safe(str(snd.get('by', '')))}"
    ]


def format_info(e: dict[str, Any]) -> str:
    ctx = e.get("context") or {}
    lines = [
        f"           ID: {e.get('id')}",
        f"         Path: {safe(e.get('path', ''))}",
        f"       Status: {safe(e.get('status', ''))}",
        f"         Rule: {safe(e.get('rule', ''))}",
        f"      Trigger: {safe(json.dumps(e.get('trigger', {}), sort_keys=True))}",
        *_sent_by(e.get("trigger")),
        f"         Time: {safe(e.get('time', ''))}",
        f"          PID: {e.get('pid')}",
        f"          UID: {e.get('uid')}",
        f"         Comm: {safe(e.get('comm', ''))}",
        f"   Executable: {safe(e.get('exe', ''))}",
        f"  Commandline: {safe(shlex.join(str(a) for a in e.get('cmdline', [])))}",
        f"       Cgroup: {safe(e.get('cgroup', ''))}",
        f"         Unit: {safe(e.get('unit', '')) or '-'}",
        f"      Content: {safe(e.get('content', ''))}",
        f"     Snapshot: {safe(e.get('snapshot', ''))}",
        f"      Threads: {e.get('threads')}",
        f"         Size: {e.get('size')} bytes ({human_size(int(e.get('size') or 0))}),"
        f" {e.get('disk_bytes')} on disk",
        f"       Frozen: {float(e.get('freeze_seconds') or 0) * 1000:.1f} ms",
        f"         Dump: {float(e.get('dump_seconds') or 0) * 1000:.1f} ms",
    ]
    if e.get("compression"):
        lines.append(f"       Stored: {safe(e['compression'])} (compressed at rest)")
    if e.get("build_ids"):
        lines.append(f"     Binaries: {len(e['build_ids'])} kept by build-id (for ctl export and debug)")
    up = e.get("upload")
    if up:
        state = str(up.get("state", ""))
        text = f"{safe(state)} {safe(up.get('key', ''))}"
        if up.get("uploaded_at"):
            text += f" at {_short_time(iso_of(float(up['uploaded_at'])))}"
        if state == "queued" and up.get("attempts"):
            text += f" (retry {up['attempts']}: {safe(up.get('error', ''))})"
        lines.append(f"       Upload: {text}")
    if ctx:
        lines.append("")
        lines.append("Context at snapshot time:")
        if "cwd" in ctx:
            lines.append(f"          cwd: {safe(ctx['cwd'])}")
        limits = {str(lim.get("name")): lim for lim in ctx.get("limits", []) if isinstance(lim, dict)}
        for name in ("Max open files", "Max core file size", "Max address space", "Max processes"):
            if name in limits:
                lim = limits[name]
                lines.append(
                    f"  {safe(name):>22}: soft {safe(lim.get('soft'))}, hard {safe(lim.get('hard'))}"
                )
        fds = ctx.get("fds", [])
        lines.append(f"     open fds: {ctx.get('fds_total', len(fds))}")
        for fd in fds[:20]:
            lines.append(f"  {fd.get('fd'):>11}: {safe(fd.get('target', ''))}")
        if len(fds) > 20:
            lines.append(f"  {'':>11}  ... ('info --json' lists all {len(fds)})")
        threads = ctx.get("threads", [])
        lines.append(f"      threads: {ctx.get('threads_total', len(threads))}")
        for t in threads[:20]:
            lines.append(
                f"  {t.get('tid'):>11}: {safe(t.get('comm', ''))} {safe(t.get('state', ''))}"
                f" {safe(t.get('wchan', ''))}"
            )
        lines.append(f"     mappings: {ctx.get('maps_total', len(ctx.get('maps', [])))}")
        for section, why in (ctx.get("errors") or {}).items():
            lines.append(f"  (could not read {safe(section)}: {safe(why)})")
    if e.get("status") == "complete":
        lines += reportview.report_lines(e)
    return "\n".join(lines)


def format_value(value: Any, indent: str = "") -> str:
    """Generic, safe rendering of status/rules results."""
    if isinstance(value, dict):
        width = max((len(str(k)) for k in value), default=0)
        out = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{indent}{safe(k)}:")
                out.append(format_value(v, indent + "  "))
            else:
                out.append(f"{indent}{safe(k):>{width}}: {safe(_scalar(v))}")
        return "\n".join(out)
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            keys: list[str] = []
            for v in value:
                keys += [str(k) for k in v if str(k) not in keys and not isinstance(v[k], (dict, list))]
            rows = [[safe(_scalar(v.get(k, ""))) for k in keys] for v in value]
            table = format_table(rows, [k.upper() for k in keys])
            return "\n".join(indent + line for line in table.splitlines())
        return "\n".join(f"{indent}- {safe(_scalar(v))}" for v in value)
    return indent + safe(_scalar(value))


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=True, default=str))


# -- commands -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snapd ctl", description="Talk to a running snapd daemon.")
    p.add_argument(
        "--socket",
        default=os.environ.get("SNAPD_SOCKET", DEFAULT_SOCKET),
        help=f"control socket (default {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the daemon (default 30; snap: 600; diff, series: 300)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = sub.add_parser("list-cores", aliases=["list"], help="list the catalogued cores, oldest first")
    ls.add_argument("--rule", help="only cores taken by this rule")
    ls.add_argument("--pid", type=int, help="only cores of this pid")
    ls.add_argument("--since", help="only cores taken since (2h, 1d, 2026-11-27T01:00Z, @UNIXTIME)")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.add_argument("--all", action="store_true", help="also list failed attempts, and why")

    info = sub.add_parser("info", help="everything the catalog knows about one core")
    info.add_argument("id", type=int)
    info.add_argument("--json", action="store_true")

    diff = sub.add_parser(
        "diff", help="what changed between two cores of one process: memory, mappings, threads, fds"
    )
    diff.add_argument("a", type=int, metavar="ID_A")
    diff.add_argument("b", type=int, metavar="ID_B")
    diff.add_argument("--top", type=int, help="mappings listed, most changed first (default 20; 0: all)")
    diff.add_argument("--json", action="store_true")

    series = sub.add_parser(
        "series", help="the trend of the cores of one firing (repeat: N), or of one rule and pid"
    )
    series.add_argument("id", type=int)
    series.add_argument("--json", action="store_true")

    rm = sub.add_parser("rm", help="delete a core and its entry (root)")
    rm.add_argument("id", type=int)

    exp = sub.add_parser(
        "export", help="write a bundle of a core and the binaries it ran, for snapd debug anywhere"
    )
    exp.add_argument("id", type=int)
    exp.add_argument("-o", dest="out", required=True, metavar="FILE", help="the bundle to write")
    exp.add_argument("--force", action="store_true", help="replace FILE if it exists")

    dbg = sub.add_parser("debug", help="start gdb (or drgn, pystack) on a core and its executable")
    dbg.add_argument("id", type=int)
    dbg.add_argument(
        "--debugger",
        default=os.environ.get("SNAPD_DEBUGGER", "gdb"),
        help="gdb (default, or $SNAPD_DEBUGGER), drgn, pystack, or another gdb-like command",
    )
    dbg.add_argument("-A", "--debugger-arguments", default="", help="extra arguments, shell-quoted")

    snap = sub.add_parser("snap", help="take a snapshot of PID now, through the daemon (root)")
    snap.add_argument("pid", type=int)
    snap.add_argument("--content", "-c", help="content spec (default: the target's coredump_filter)")
    snap.add_argument(
        "--snapshot",
        choices=("frozen", "fork", "auto"),
        help="as snapd gcore --snapshot (default: auto: fork big processes, freeze small ones)",
    )
    snap.add_argument("--json", action="store_true")

    for name, text in (
        ("status", "rules, probes, events seen/suppressed, cores taken, paused?"),
        ("rules", "the rules and their state (armed, invalid, waiting for target, muted...)"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--json", action="store_true")
        if name == "rules":
            sp.add_argument("--matches", action="store_true", help="the processes each rule selects now")
    sub.add_parser("metrics", help="the daemon's metrics, in the Prometheus text format")
    pause = sub.add_parser(
        "pause", help="stop every freeze and dump until 'resume' (root; survives restarts)"
    )
    pause.add_argument("--reason", default="", help="recorded with the pause")
    sub.add_parser("resume", help="allow snapshots again (root)")
    sub.add_parser("reload", help="re-read the rules directory (root)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    cmd = "list-cores" if args.command == "list" else args.command
    slow = {"snap": 600.0, "diff": 300.0, "series": 300.0}
    timeout = args.timeout if args.timeout is not None else slow.get(cmd, 30.0)
    with Client(args.socket, timeout=timeout) as c:
        if cmd == "list-cores":
            since = parse_since(args.since) if args.since else None
            cores = c.call("list-cores", rule=args.rule, pid=args.pid, since=since, all=args.all)
            if args.json:
                _print_json(cores)
            if not cores:
                if not args.json:
                    print("No cores found.", file=sys.stderr)
                return 1
            if not args.json:
                print(format_cores(cores))
            return 0
        if cmd == "info":
            entry = c.call("info", id=args.id)
            if args.json:
                _print_json(entry)
            else:
                print(format_info(entry))
            return 0
        if cmd in ("diff", "series"):
            if cmd == "diff":
                result = c.call("diff", a=args.a, b=args.b, top=args.top)
            else:
                result = c.call("series", id=args.id)
            if args.json:
                _print_json(reportview.without_text(result))
            else:
                print(reportview.diff_text(result) if cmd == "diff" else reportview.series_text(result))
            return 0
        if cmd == "rm":
            entry = c.call("rm", id=args.id)
            print(f"removed core {entry['id']}: {safe(entry['path'])}")
            return 0
        if cmd == "export":
            from snapd.ctl import export  # the ship stage: bundles

            return _again(c, args.id, lambda e: export.export(e, args.out, force=args.force))
        if cmd == "debug":
            entry = c.call("info", id=args.id)
            status = entry.get("status")
            if status == "remote" or (status == "complete" and _needs_unpacking(entry)):
                from snapd.ctl import export

                return _again(c, args.id, lambda e: export.debug(e, args.debugger, args.debugger_arguments))
            return _debug(entry, args.debugger, args.debugger_arguments)
        if cmd == "metrics":
            sys.stdout.write(str(c.call("metrics")))
            return 0
        if cmd == "snap":
            result = c.call("snap", pid=args.pid, content=args.content, snapshot=args.snapshot)
            if args.json:
                _print_json(result)
            elif isinstance(result, dict) and "id" in result:
                path, status = safe(result.get("path", "")), safe(result.get("status", ""))
                print(f"core {result['id']}: {path} ({status})")
            else:
                print(format_value(result))
            return 0
        if cmd == "rules":
            rules = c.call("rules", matches=True if args.matches else None)
            if args.json:
                _print_json(rules)
            else:
                print(format_rules(rules))
            return 0
        reason = (args.reason or None) if cmd == "pause" else None
        result = c.call(cmd, reason=reason)
        if getattr(args, "json", False):
            _print_json(result)
        elif result is not None:
            print(format_value(result))
        return 0


def _needs_unpacking(entry: dict[str, Any]) -> bool:
    return bool(entry.get("compression") or entry.get("build_ids"))


def _again(c: Client, core_id: int, act: Callable[[dict[str, Any]], int]) -> int:
    """``act(entry)``; once more with a fresh entry if its file went meanwhile (the daemon
    swaps a core for its compressed copy once it is written)."""
    entry = c.call("info", id=core_id)
    try:
        return act(entry)
    except SnapdError:
        if os.path.exists(str(entry.get("path", ""))):
            raise
    return act(c.call("info", id=core_id))


def _debug(entry: dict[str, Any], debugger: str, extra: str) -> int:
    if entry.get("status") != "complete":
        raise CtlError(f"core {entry.get('id')} is {safe(entry.get('status'))}: nothing to debug")
    path = str(entry["path"])
    if not os.path.exists(path):
        raise CtlError(f"{safe(path)}: the core file is gone")
    if not os.access(path, os.R_OK):
        raise CtlError(f"{safe(path)}: permission denied (cores are 0600 root; run as root)")
    exe: str | None = str(entry.get("exe") or "").removesuffix(" (deleted)")
    if not (exe and exe.startswith("/") and os.path.exists(exe)):
        print(f"warning: executable {safe(exe) or '?'} is gone; starting without it", file=sys.stderr)
        exe = None
    # imported here only: the ship stage loads zstandard and pyelftools
    from snapd.ship.debug import DEBUGGERS, Target, debugger_argv, find_debugger

    if debugger in DEBUGGERS:  # each with its own command line (drgn -c CORE, pystack core CORE EXE)
        prog = find_debugger(debugger)
        argv = [prog, *debugger_argv(debugger, Target(path, exe), shlex.split(extra))[1:]]
    else:  # another gdb-like debugger named by --debugger or SNAPD_DEBUGGER
        found = shutil.which(debugger)
        if found is None:
            raise CtlError(f"{safe(debugger)}: not found on PATH; install it or pass --debugger")
        argv = [found, *([exe] if exe else []), "-c", path, *shlex.split(extra)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 127  # pragma: no cover  (execv does not return)
