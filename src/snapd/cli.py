"""The ``snapd`` command: ``main(argv) -> int`` dispatching to one module per subcommand.

Subcommand modules are imported lazily so that ``snapd gcore`` never loads bcc or the rules.
Every :class:`~snapd.errors.SnapdError` becomes one line on stderr; a traceback is shown only with
``SNAPD_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from snapd.errors import SnapdError

# name -> (module with main(argv) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "gcore": ("snapd.core.cli", "write a core of live processes without stopping them for long"),
    "inspect": ("snapd.inspect", "show the threads, mappings and notes of a core file"),
    "diff": ("snapd.diff.cli", "compare two cores of one process: memory, pages changed, threads"),
    "check": ("snapd.daemon.check", "validate rule files (and, as root, load their probes)"),
    "daemon": ("snapd.daemon.cli", "run the snapshot daemon"),
    "ctl": ("snapd.ctl.client", "talk to a running daemon (list-cores, status, pause, ...)"),
    "bundle": ("snapd.ship.bundlecmd", "pack a core and the binaries it ran into one file to send"),
    "debug": ("snapd.ship.debug", "open a bundle or core in gdb, drgn or pystack, on any machine"),
    "fleet": ("snapd.ship.fleet", "list and fetch the cores of every host from the object store"),
}


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so that every ``finally`` runs (resume, unlink)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: snapd COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'snapd COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from snapd import __version__

        print(f"snapd {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"snapd: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    if name != "daemon":
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        module = importlib.import_module(COMMANDS[name][0])
        rc: int = module.main(args[1:])
        return rc
    except SnapdError as err:
        if os.environ.get("SNAPD_DEBUG") == "1":
            raise
        print(f"snapd {name}: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `snapd inspect core | head`: the reader left; say nothing more (and let the
        # interpreter's final flush go to /dev/null rather than raise again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (KeyboardInterrupt, Terminated) as err:
        if os.environ.get("SNAPD_DEBUG") == "1":
            raise
        print(f"snapd {name}: interrupted ({err or 'SIGINT'}); targets resumed", file=sys.stderr)
        return 130
