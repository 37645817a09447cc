"""``snapd daemon``: rules in, cores out (see :mod:`snapd.daemon.service`)."""

from snapd.daemon.service import Daemon, main

__all__ = ["Daemon", "main"]
