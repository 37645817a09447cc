"""Where snapd lives on a system (the packaged unit, systemd/snapd-cores.service, agrees).

``snapd-cores``, not ``snapd``: Ubuntu's snap daemon owns ``/etc/snapd``, ``/var/lib/snapd`` and
``snapd.service``.
"""

from __future__ import annotations

DEFAULT_RULES = "/etc/snapd-cores/rules.d"
DEFAULT_STATE = "/var/lib/snapd-cores"
DEFAULT_SOCKET = "/run/snapd-cores/ctl.sock"
DEFAULT_CONFIG = "/etc/snapd-cores/snapd.yaml"
