"""snapd: event-triggered snapshots (ELF cores) of live Linux processes."""

__version__ = "0.1.0"
