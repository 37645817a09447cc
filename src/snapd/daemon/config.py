"""The daemon's configuration file (``snapd daemon --config FILE``, default
``/etc/snapd-cores/snapd.yaml``; optional): daemon-wide settings in YAML, read as strictly as a
rule file.

::

    retention:                 # coredump.conf(5)'s MaxUse, KeepFree, MaxAge; see docs/catalog.md
      max_use: 4G              # bytes, a unit (K M G T, KiB..., kB...), or N% of the file system
      keep_free: 15%
      max_age: 7d
      max_cores_per_rule: 20
      rules: {oom: {max_cores: 5, max_use: 1G}}
    cores_per_hour: 60         # daemon-wide cap
    compress: zstd             # or none (the default): cores stored as CORE.zst once complete
    elf_cache: true            # keep the binaries each core maps, by build-id (the default)
    upload: {endpoint: ..., bucket: ..., prefix: ..., credentials: ..., keep_local: true}
    report: {max_threads: 64, max_frames: 64, deadline: 30s, memory: 4GiB, python: true}
    metrics: {textfile: /var/lib/prometheus/node-exporter/snapd.prom, interval: 15s}

The file is composed with the rules' strict composer (no anchors, aliases or custom tags) and
read with their schema accessors: unknown keys (with a "did you mean"), wrong types and bad
values are reported as ``file:line:col: message``, every one of them. Like a rule file it
decides what the daemon does as root (where cores go, which credentials it sends where), so it
must be a regular file owned by root that group and others cannot write, in directories only
root can change. Command-line options override what it says.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from snapd.daemon.ruledir import directory_problem, trust_problem
from snapd.errors import SnapdError
from snapd.paths import DEFAULT_CONFIG
from snapd.report.model import ReportLimits
from snapd.rules.compose import compose, decode
from snapd.rules.schema import BOOL, INT, NULL, STR, Ctx, Schema
from snapd.ship.config import BadValue, UploadConfig, upload_config_from
from snapd.store.errors import StoreError
from snapd.store.retention import Retention
from snapd.text import safe
from snapd.units import parse_duration, parse_size

KIND = "configuration file"
MAX_CONFIG_BYTES = 1 << 20
NS = 1e9


class Compression(str, enum.Enum):
    NONE = "none"
    ZSTD = "zstd"


@dataclass(frozen=True)
class DaemonConfig:
    """What the configuration file says (the defaults when there is none)."""

    path: str = ""  # the file it came from; "" when none was read
    #: coredump.conf-style keys for :meth:`snapd.store.Retention.from_mapping` (options merge in)
    retention: Mapping[str, object] = field(default_factory=dict)
    cores_per_hour: int | None = None
    compress: Compression = Compression.NONE
    elf_cache: bool = True
    upload: UploadConfig | None = None
    report: ReportLimits = field(default_factory=ReportLimits)
    metrics_textfile: str | None = None
    metrics_interval: float = 15.0  # seconds between rewrites of the textfile

    def retention_with(self, overrides: Mapping[str, object]) -> Retention | None:
        """The retention settings, command-line ``overrides`` (same keys) winning; None when
        neither says anything (the catalog's defaults)."""
        merged = {**self.retention, **overrides}
        return Retention.from_mapping(merged) if merged else None


class ConfigFileError(SnapdError):
    """The configuration file is unusable; ``errors`` are its lines (``file:line:col: ...``)."""

    def __init__(self, errors: list[str]) -> None:
        more = f" (and {len(errors) - 1} more: snapd check FILE)" if len(errors) > 1 else ""
        super().__init__(errors[0] + more)
        self.errors = errors


def load_config(path: str | None = None) -> DaemonConfig:
    """Read ``path`` (None: the default file, which may be missing); raise
    :class:`ConfigFileError` with every problem found."""
    if path is None:
        if not os.path.lexists(DEFAULT_CONFIG):
            return DaemonConfig()
        path = DEFAULT_CONFIG
    config, errors = check_config(path)
    if errors or config is None:
        raise ConfigFileError(errors or [f"{path}: unusable"])
    return config


def check_config(path: str, *, trust: bool = True) -> tuple[DaemonConfig | None, list[str]]:
    """Validate ``path``: the config, or None and each error as one line."""
    data, problem = _read(path, trust)
    if problem:
        return None, [safe(problem)]
    ctx = Ctx(path, KIND)
    text = decode(path, data, ctx)
    node = compose(text, ctx, allow_empty=True) if text is not None else None
    if ctx.errors:
        return None, [str(e) for e in ctx.errors]
    if node is None:
        return DaemonConfig(path=path), []
    config = _Builder(ctx, path).build(node)
    if ctx.errors:
        return None, [str(e) for e in sorted(ctx.errors, key=lambda e: (e.line, e.col))]
    return config, []


def _read(path: str, trust: bool) -> tuple[bytes, str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        why = "a symlink; the configuration must be a regular file" if err.errno == 40 else err.strerror
        return b"", f"{path}: cannot read: {why}"
    try:
        st = os.fstat(fd)
        problem = trust_problem(st) if trust else None
        if problem is None and trust:
            problem = directory_problem(os.path.dirname(os.path.abspath(path)))
        if problem:
            return b"", f"{path}: refused: {problem}"
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        return b"", f"{path}: larger than {MAX_CONFIG_BYTES} bytes; a configuration file is small"
    return data, ""


_TOP = {
    "retention": False,
    "cores_per_hour": False,
    "compress": False,
    "elf_cache": False,
    "upload": False,
    "report": False,
    "metrics": False,
}
_RETENTION = {"max_use": False, "keep_free": False, "max_age": False, "max_cores_per_rule": False,
              "rules": False}  # fmt: skip
_RULE_LIMIT = {"max_cores": False, "max_use": False}
_UPLOAD_KEYS = {
    "endpoint": False,
    "bucket": True,
    "prefix": False,
    "credentials": False,
    "region": False,
    "host": False,
    "part_size": False,
    "multipart_threshold": False,
    "keep_local": False,
    "retry_min": False,
    "retry_max": False,
}
_REPORT = {"max_threads": False, "max_frames": False, "max_python_frames": False, "max_modules": False,
           "deadline": False, "memory": False, "python": False}  # fmt: skip
_METRICS = {"textfile": False, "interval": False}
_FLOAT = "tag:yaml.org,2002:float"


class _Builder:
    def __init__(self, ctx: Ctx, path: str) -> None:
        self.ctx = ctx
        self.s = Schema(ctx)
        self.path = path

    def build(self, node: Node) -> DaemonConfig:
        top = self.s.mapping(node, "configuration", _TOP)
        if top is None:
            return DaemonConfig(path=self.path)
        kw: dict[str, Any] = {"path": self.path}
        if "retention" in top:
            kw["retention"] = self._retention(top["retention"][1])
        if "cores_per_hour" in top:
            kw["cores_per_hour"] = self.s.integer(top["cores_per_hour"][1], "cores_per_hour", 1, 1_000_000)
        if "compress" in top:
            kw["compress"] = self._compress(top["compress"][1])
        if "elf_cache" in top:
            kw["elf_cache"] = self.s.scalar(top["elf_cache"][1], "elf_cache", BOOL)
        if "upload" in top:
            kw["upload"] = self._upload(top["upload"][1])
        if "report" in top:
            kw["report"] = self._report(top["report"][1])
        if "metrics" in top:
            self._metrics(top["metrics"][1], kw)
        return DaemonConfig(**{k: v for k, v in kw.items() if v is not None})

    # --- sections ------------------------------------------------------------------------------
    def _retention(self, node: Node) -> dict[str, object] | None:
        m = self.s.mapping(node, "retention", _RETENTION)
        if m is None:
            return None
        out: dict[str, object] = {}
        for key, camel in (("max_use", "MaxUse"), ("keep_free", "KeepFree"), ("max_age", "MaxAge"),
                           ("max_cores_per_rule", "MaxCoresPerRule")):  # fmt: skip
            if key in m:
                v = self._plain(m[key][1], f"retention.{key}")
                if v is not _BAD and self._retention_ok(m[key][1], f"retention.{key}", {camel: v}):
                    out[camel] = v
        if "rules" in m:
            rules = self._rule_limits(m["rules"][1])
            if rules is not None:
                out["Rules"] = rules
        return out

    def _rule_limits(self, node: Node) -> dict[str, dict[str, object]] | None:
        if not isinstance(node, MappingNode):
            self.ctx.err(node, "retention.rules: expected a mapping of rule names to {max_cores, max_use}")
            return None
        out: dict[str, dict[str, object]] = {}
        for knode, vnode in node.value:
            name = self.s.string(knode, "retention.rules", max_len=200)
            if name is None:
                continue
            where = f"retention.rules.{name}"
            m = self.s.mapping(vnode, where, _RULE_LIMIT)
            if m is None:
                continue
            lim: dict[str, object] = {}
            for key, camel in (("max_cores", "MaxCores"), ("max_use", "MaxUse")):
                if key in m:
                    v = self._plain(m[key][1], f"{where}.{key}")
                    if v is not _BAD and self._retention_ok(m[key][1], f"{where}.{key}",
                                                            {"Rules": {name: {camel: v}}}):  # fmt: skip
                        lim[camel] = v
            out[name] = lim
        return out

    def _retention_ok(self, node: Node, where: str, conf: dict[str, object]) -> bool:
        try:
            Retention.from_mapping(conf)
        except StoreError as err:
            self.ctx.err(node, f"{where}: {str(err).removeprefix('retention: ')}")
            return False
        return True

    def _compress(self, node: Node) -> Compression | None:
        if isinstance(node, ScalarNode) and node.tag == BOOL:
            self.ctx.err(node, "compress: expected zstd or none, got true/false")
            return None
        s = self.s.string(node, "compress", 16)
        if s is None:
            return None
        try:
            return Compression(s)
        except ValueError:
            self.ctx.err(node, f"compress: {s!r} is not one of {', '.join(c.value for c in Compression)}")
            return None

    def _upload(self, node: Node) -> UploadConfig | None:
        m = self.s.mapping(node, "upload", _UPLOAD_KEYS)
        if m is None or "bucket" not in m:
            return None
        values: dict[str, Any] = {}
        for key, (_, vnode) in m.items():
            v = self._plain(vnode, f"upload.{key}")
            if v is not _BAD:
                values[key] = v
        if len(values) != len(m):
            return None
        try:
            return upload_config_from(values, self.path)
        except BadValue as bad:
            self.ctx.err(m[bad.key][1] if bad.key in m else node, bad.msg)
            return None

    def _report(self, node: Node) -> ReportLimits | None:
        m = self.s.mapping(node, "report", _REPORT)
        if m is None:
            return None
        kw: dict[str, Any] = {}
        for key in ("max_threads", "max_frames", "max_python_frames"):
            if key in m:
                kw[key] = self.s.integer(m[key][1], f"report.{key}", 1, 100_000)
        if "max_modules" in m:
            kw["max_modules"] = self.s.integer(m["max_modules"][1], "report.max_modules", 1, 1_000_000)
        if "deadline" in m:
            ns = self.s.unit(m["deadline"][1], "report.deadline", parse_duration)
            kw["deadline"] = ns / NS if ns is not None else None
        if "memory" in m:
            kw["memory"] = self.s.unit(m["memory"][1], "report.memory", parse_size)
            if kw["memory"] is not None and kw["memory"] < 256 << 20:
                self.ctx.err(m["memory"][1], "report.memory: at least 256MiB (drgn indexes debug info)")
                kw["memory"] = None
        if "python" in m:
            kw["python"] = self.s.scalar(m["python"][1], "report.python", BOOL)
        if any(v is None for v in kw.values()):
            return None
        return ReportLimits(**kw)

    def _metrics(self, node: Node, kw: dict[str, Any]) -> None:
        m = self.s.mapping(node, "metrics", _METRICS)
        if m is None:
            return
        if "textfile" in m:
            vnode = m["textfile"][1]
            path = self.s.string(vnode, "metrics.textfile")
            if path is not None and not os.path.isabs(path):
                self.ctx.err(vnode, "metrics.textfile: must be an absolute path")
            elif path is not None and not path.endswith(".prom"):
                self.ctx.err(vnode, "metrics.textfile: node_exporter's textfile collector reads only *.prom")
            elif path is not None:
                kw["metrics_textfile"] = path
        if "interval" in m:
            ns = self.s.unit(m["interval"][1], "metrics.interval", parse_duration)
            if ns is not None and ns < NS:
                self.ctx.err(m["interval"][1], "metrics.interval: at least 1s")
            elif ns is not None:
                kw["metrics_interval"] = ns / NS

    # --- values --------------------------------------------------------------------------------
    def _plain(self, node: Node, where: str) -> Any:
        """A scalar as YAML means it (string, integer, number, true/false); _BAD after an error."""
        if not self.s.tags_ok(node):
            return _BAD
        if not isinstance(node, ScalarNode):
            self.ctx.err(node, f"{where}: expected a single value")
            return _BAD
        if node.tag == NULL:
            self.ctx.err(node, f"{where}: missing value")
            return _BAD
        read: dict[str, Callable[[], Any]] = {
            STR: lambda: self.s.string(node, where),
            INT: lambda: self.s.integer(node, where, 0, (1 << 63) - 1),
            BOOL: lambda: self.s.scalar(node, where, BOOL),
            _FLOAT: lambda: _float(node.value),
        }
        if node.tag not in read:
            self.ctx.err(node, f"{where}: expected a string, a number or true/false")
            return _BAD
        v = read[node.tag]()
        if v is None:
            if node.tag == _FLOAT:
                self.ctx.err(node, f"{where}: not a usable number")
            return _BAD
        return v


_BAD = object()


def _float(text: str) -> float | None:
    try:
        v = float(text.replace("_", ""))
    except ValueError:
        return None
    return v if v == v and abs(v) != float("inf") else None
