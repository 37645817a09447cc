"""The ``upload:`` settings (issue 13): where bundles go, parsed into one typed record.

::

    upload:
      endpoint: http://127.0.0.1:8333     # any S3-compatible store; absent: AWS
      bucket: cores
      prefix: fleet                       # objects: PREFIX/HOST/ID-NAME.snapd
      credentials: /etc/snapd-cores/s3.ini   # [default] aws_access_key_id / aws_secret_access_key

The same section will live in the daemon's configuration file; other top-level keys of the file
belong to the daemon and are not checked here. Errors name ``file:line:col``. The credentials
file holds a secret: it must be a regular file of root's (or ours) that nobody else may read.
"""

from __future__ import annotations

import configparser
import os
import re
import socket
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

from snapd.ship.errors import ConfigError

MIB = 1 << 20
MIN_PART = 5 * MIB  # S3's smallest part but the last (UploadPart)
MAX_PARTS = 10000


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class UploadConfig:
    bucket: str
    endpoint: str | None = None
    prefix: str = ""
    credentials: str | None = None  # INI file; None: the standard AWS chain
    region: str = "us-east-1"
    host: str = field(default_factory=socket.gethostname)
    part_size: int = 16 * MIB
    multipart_threshold: int = 64 * MIB
    keep_local: bool = True
    retry_min: float = 2.0  # seconds before the first retry; doubles up to retry_max
    retry_max: float = 600.0
    source: str = ""  # the file this came from, for messages

    def read_credentials(self) -> Credentials | None:
        return read_credentials(self.credentials) if self.credentials else None


# key -> (type, required)
_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "endpoint": (str, False),
    "bucket": (str, True),
    "prefix": (str, False),
    "credentials": (str, False),
    "region": (str, False),
    "host": (str, False),
    "part_size": ((int, str), False),
    "multipart_threshold": ((int, str), False),
    "keep_local": (bool, False),
    "retry_min": ((int, float), False),
    "retry_max": ((int, float), False),
}
_SIZE = re.compile(r"\s*(\d+)\s*([KMG]i?B?|B)?\s*", re.IGNORECASE)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,253}[a-z0-9]")


def parse_size(v: int | str) -> int:
    if isinstance(v, int):
        return v
    m = _SIZE.fullmatch(v)
    if not m:
        raise ValueError(f"{v!r} is not a size (e.g. 16MiB)")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def load_upload_config(path: str) -> UploadConfig:
    """Read the ``upload:`` section of the YAML file ``path``."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20)
    except OSError as err:
        raise ConfigError(path, f"cannot read: {err.strerror}") from err
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError(path, f"not valid YAML: {getattr(err, 'problem', err)}", line, col) from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(path, "must be a mapping with an 'upload:' section", 1, 1)
    for k, v in root.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "upload":
            return _from_node(v, path)
    raise ConfigError(path, "has no 'upload:' section", 1, 1)


def _from_node(node: yaml.Node, path: str) -> UploadConfig:
    def at(n: yaml.Node) -> tuple[int, int]:
        return n.start_mark.line + 1, n.start_mark.column + 1

    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            path, "'upload' must be a mapping (endpoint, bucket, prefix, credentials)", *at(node)
        )
    values: dict[str, Any] = {}
    for k, v in node.value:
        key = k.value if isinstance(k, yaml.ScalarNode) else None
        if key not in _KEYS:
            raise ConfigError(path, f"upload: unknown key {key!r}; known: {', '.join(_KEYS)}", *at(k))
        if key in values:
            raise ConfigError(path, f"upload: {key} given twice", *at(k))
        if not isinstance(v, yaml.ScalarNode):
            raise ConfigError(path, f"upload.{key} must be a single value", *at(v))
        values[key] = (yaml.safe_load(yaml.serialize(v)), at(v))
    try:
        return upload_config_from({k: v for k, (v, _) in values.items()}, path)
    except BadValue as bad:
        line, col = values[bad.key][1] if bad.key in values else at(node)
        raise ConfigError(path, bad.msg, line, col) from None


class BadValue(Exception):
    """One wrong value of the ``upload:`` section: its ``key`` (to find its line) and why."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key, self.msg = key, msg


def upload_config_from(d: dict[str, Any], source: str) -> UploadConfig:
    """Build the record from an already-parsed mapping (the daemon's config loader calls this);
    raises :class:`BadValue` (key, message) on a wrong value."""
    for key, (typ, required) in _KEYS.items():
        if required and key not in d:
            raise BadValue(key, f"upload.{key} is required")
        if key in d and (not isinstance(d[key], typ) or (typ is not bool and isinstance(d[key], bool))):
            raise BadValue(key, f"upload.{key} must be {_type_name(typ)}, not {type(d[key]).__name__}")
    if not _BUCKET.fullmatch(d["bucket"]):
        raise BadValue("bucket", f"upload.bucket {d['bucket']!r} is not a valid bucket name")
    kw: dict[str, Any] = {k: d[k] for k in ("endpoint", "region", "host", "keep_local") if k in d}
    if "endpoint" in d and not re.match(r"https?://", d["endpoint"]):
        raise BadValue("endpoint", "upload.endpoint must be an http:// or https:// URL")
    kw["prefix"] = d.get("prefix", "").strip("/")
    for key in ("part_size", "multipart_threshold"):
        if key in d:
            try:
                kw[key] = parse_size(d[key])
            except ValueError as err:
                raise BadValue(key, f"upload.{key}: {err}") from None
    if kw.get("part_size", MIN_PART) < MIN_PART:
        raise BadValue("part_size", f"upload.part_size must be at least {MIN_PART // MIB}MiB (S3's minimum)")
    for key in ("retry_min", "retry_max"):
        if key in d:
            if d[key] <= 0:
                raise BadValue(key, f"upload.{key} must be positive")
            kw[key] = float(d[key])
    if "credentials" in d:
        cred = d["credentials"]
        if not os.path.isabs(cred):
            raise BadValue("credentials", "upload.credentials must be an absolute path")
        try:
            read_credentials(cred)
        except ConfigError as err:
            raise BadValue("credentials", str(err)) from None
        kw["credentials"] = cred
    return UploadConfig(bucket=d["bucket"], source=source, **kw)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def read_credentials(path: str) -> Credentials:
    """``[default] aws_access_key_id / aws_secret_access_key`` from an INI file only root (or we)
    own and nobody else may read or write (a secret key readable by others is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(path, f"cannot read the credentials file: {err.strerror}") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, "the credentials file is not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(path, f"the credentials file is owned by uid {st.st_uid}; chown root it")
        if st.st_mode & 0o077:
            raise ConfigError(
                path, f"the credentials file has mode {stat.S_IMODE(st.st_mode):04o}; chmod 600 it"
            )
        text = os.read(fd, 1 << 16).decode("utf-8", "replace")
    finally:
        os.close(fd)
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(text, source=path)
    except configparser.Error as err:
        raise ConfigError(path, f"not a valid INI file: {str(err).splitlines()[0]}") from None
    if not cp.has_section("default"):
        raise ConfigError(path, "no [default] section (aws_access_key_id, aws_secret_access_key)")
    sec = cp["default"]
    key, secret = sec.get("aws_access_key_id", "").strip(), sec.get("aws_secret_access_key", "").strip()
    if not key or not secret:
        raise ConfigError(path, "[default] needs aws_access_key_id and aws_secret_access_key")
    return Credentials(key, secret, sec.get("aws_session_token", "").strip() or None)
