"""The probe layer: rules compiled to eBPF (bcc), predicates evaluated in the kernel.

``Probes`` is the only user of bcc in snapd, and imports it on first use, so importing this
package (e.g. for :class:`Event`) does not load BPF.
"""

from __future__ import annotations

from snapd.probe.event import Event, Kind, UserStack
from snapd.probe.probes import Probes

__all__ = ["Event", "Kind", "Probes", "UserStack"]
