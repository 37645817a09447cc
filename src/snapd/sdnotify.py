"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op returning ``False``. The
socket is a path, or an abstract name when it starts with ``@`` (sd_notify(3), "NOTES").
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str, unset_environment: bool = False) -> bool:
    """Send ``KEY=value`` lines; ``True`` if a notification socket took them."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if unset_environment:
        os.environ.pop("NOTIFY_SOCKET", None)
    if not addr or not fields:
        return False
    if addr[0] not in "/@":
        return False  # sd_notify(3) supports vsock too; snapd does not need it
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    msg = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(msg, target)
    except OSError:
        return False  # a lost notification must never take the daemon down
    return True


def ready(status: str = "") -> bool:
    """READY=1: for Type=notify, send it only once rules are loaded and probes attached."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def reloading(status: str = "") -> bool:
    """RELOADING=1 with MONOTONIC_USEC (systemd.service(5), Type=notify-reload); send
    :func:`ready` when the reload is done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    extra = [f"STATUS={status}"] if status else []
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *extra)


def stopping(status: str = "") -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def watchdog_interval() -> float | None:
    """Seconds between required WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled(3)
    advises), or ``None`` if the watchdog is not enabled for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
