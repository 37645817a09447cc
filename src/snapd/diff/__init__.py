"""Comparing cores of one process: what changed between two snapshots, and the trend of a series.

    from snapd.diff import diff_cores, diff_context, series
    d = diff_cores("/var/lib/snapd-cores/a.core", "/var/lib/snapd-cores/b.core", top=20)
    print(d.summary())            # heap +64.0 MiB; 1000 pages changed in [anon 7f..]; ...
    json.dumps(d.to_dict())       # the shape of `snapd diff --json`

Everything here takes plain paths and dicts (the catalog's /proc contexts and stack reports) and
imports neither the daemon nor the catalog. Core files are hostile input: reading one takes
bounded memory whatever its size or its headers claim, and every malformation is a
:class:`BadCore` whose ``str()`` is one line.
"""

from snapd.diff.context import diff_context
from snapd.diff.cores import DEFAULT_TOP, diff_cores
from snapd.diff.errors import BadCore, DifferentProcesses, DiffError
from snapd.diff.model import ContextDiff, Diff, MappingDelta
from snapd.diff.series import Series, series

__all__ = [
    "DEFAULT_TOP",
    "BadCore",
    "ContextDiff",
    "Diff",
    "DiffError",
    "DifferentProcesses",
    "MappingDelta",
    "Series",
    "diff_context",
    "diff_cores",
    "series",
]
