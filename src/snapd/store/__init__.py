"""The store: the catalog of cores (SQLite + files), retention, the pause switch.

Imports :mod:`snapd.core.info` records only; never bcc, never the rules.
"""

from __future__ import annotations

from snapd.atomicfile import PARTIAL_PREFIX
from snapd.store.catalog import CORES_DIR, Catalog
from snapd.store.db import DB_NAME
from snapd.store.entry import COMPLETE, PENDING, Entry, iso_utc
from snapd.store.errors import CoreBusy, NoSuchCore, StoreError, UnsafePath
from snapd.store.pause import PauseState, PauseSwitch
from snapd.store.recovery import RecoveryReport
from snapd.store.reports import ReportState, ReportStore
from snapd.store.retention import ByteLimit, Retention, RuleLimit, parse_age
from snapd.template import DEFAULT_TEMPLATE, TemplateError, expand, validate_template

__all__ = [
    "COMPLETE",
    "CORES_DIR",
    "DB_NAME",
    "DEFAULT_TEMPLATE",
    "PARTIAL_PREFIX",
    "PENDING",
    "ByteLimit",
    "Catalog",
    "CoreBusy",
    "Entry",
    "NoSuchCore",
    "PauseState",
    "PauseSwitch",
    "RecoveryReport",
    "ReportState",
    "ReportStore",
    "Retention",
    "RuleLimit",
    "StoreError",
    "TemplateError",
    "UnsafePath",
    "expand",
    "iso_utc",
    "parse_age",
    "validate_template",
]
