"""The daemon's configuration file, read as strictly as a rule file (no daemon, no kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapd.daemon.config import Compression, ConfigFileError, DaemonConfig, check_config, load_config
from snapd.store.retention import ByteLimit

FULL = """\
# every section
retention:
  max_use: 4G
  keep_free: 15%
  max_age: 7d
  max_cores_per_rule: 20
  rules: {oom: {max_cores: 5, max_use: 1G}}
cores_per_hour: 30
compress: zstd
elf_cache: false
upload:
  endpoint: http://127.0.0.1:8333
  bucket: cores
  prefix: /fleet/
  keep_local: false
  part_size: 8MiB
  retry_min: 1
report: {max_threads: 8, deadline: 20s, memory: 1GiB, python: false}
metrics: {textfile: /var/lib/node-exporter/snapd.prom, interval: 5s}
"""


def write(tmp_path: Path, text: str, name: str = "snapd.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    os.chmod(p, 0o644)
    return str(p)


def errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    config, errs = check_config(path, trust=False)
    assert config is None or not errs
    return [e.removeprefix(f"{path}:") for e in errs]


def test_every_section(tmp_path: Path) -> None:
    c, errs = check_config(write(tmp_path, FULL), trust=False)
    assert errs == [] and c is not None
    assert c.retention == {"MaxUse": "4G", "KeepFree": "15%", "MaxAge": "7d", "MaxCoresPerRule": 20,
                           "Rules": {"oom": {"MaxCores": 5, "MaxUse": "1G"}}}  # fmt: skip
    assert (c.cores_per_hour, c.compress, c.elf_cache) == (30, Compression.ZSTD, False)
    assert c.upload is not None and c.upload.bucket == "cores" and c.upload.prefix == "fleet"
    assert not c.upload.keep_local and c.upload.part_size == 8 << 20 and c.upload.retry_min == 1.0
    r = c.report
    assert (r.max_threads, r.deadline, r.memory, r.python) == (8, 20.0, 1 << 30, False)
    assert (c.metrics_textfile, c.metrics_interval) == ("/var/lib/node-exporter/snapd.prom", 5.0)


def test_options_override_the_file(tmp_path: Path) -> None:
    c, _ = check_config(write(tmp_path, "retention: {max_use: 4G, max_age: 7d}\n"), trust=False)
    assert c is not None
    r = c.retention_with({"MaxUse": "1G"})
    assert r is not None and r.max_use == ByteLimit(1 << 30) and r.max_age == 7 * 86400
    assert DaemonConfig().retention_with({}) is None, "nothing said: the catalog's defaults"


def test_comments_only_is_the_defaults(tmp_path: Path) -> None:
    c, errs = check_config(write(tmp_path, "# nothing yet\n"), trust=False)
    assert errs == [] and c is not None and c.compress is Compression.NONE and c.upload is None


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("retention:\n  maxuse: 4G\n", ["2:3: retention: unknown key 'maxuse'; did you mean 'max_use'?"]),
        ("compress: true\n", ["1:11: compress: expected zstd or none, got true/false"]),
        ("cores_per_hour: 0\n", ["1:17: cores_per_hour: 0 is out of range (1..1000000)"]),
        ("upload:\n  endpoint: http://x\n", ["2:3: upload: missing required key 'bucket'"]),
        ("upload: {bucket: Cores!}\n", ["1:18: upload.bucket 'Cores!' is not a valid bucket name"]),
        ("upload: {bucket: bkt, part_size: 1MiB}\n",
         ["1:34: upload.part_size must be at least 5MiB (S3's minimum)"]),
        ("upload: {bucket: bkt, credentials: /nonexistent.ini}\n",
         ["1:36: /nonexistent.ini: cannot read the credentials file: No such file or directory"]),
        ("report: {memory: 1MiB}\n", ["1:18: report.memory: at least 256MiB (drgn indexes debug info)"]),
        ("metrics: {textfile: /x/snapd.txt}\n",
         ["1:21: metrics.textfile: node_exporter's textfile collector reads only *.prom"]),
        ("a: &x 1\nb: *x\n", ["1:4: YAML anchors (&name) are not allowed in configuration files"]),
        ("retention: {max_age: soon, max_use: 4Q}\n",
         ["1:22: retention.max_age: age 'soon': expected e.g. 7d, 12h, 30min or seconds",
          "1:37: retention.max_use: bad size '4Q': use a number of bytes, or a number and a unit "
          "(B, K, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB, TB), e.g. 2GiB"]),
    ],
)  # fmt: skip
def test_each_error_is_file_line_col(tmp_path: Path, text: str, want: list[str]) -> None:
    assert errors(tmp_path, text) == want


def test_a_credentials_file_others_may_read_is_refused(tmp_path: Path) -> None:
    cred = tmp_path / "s3.ini"
    cred.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    os.chmod(cred, 0o644)
    assert errors(tmp_path, f"upload: {{bucket: bkt, credentials: {cred}}}\n") == [
        f"1:36: {cred}: the credentials file has mode 0644; chmod 600 it"
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="files must be root's to be trusted")
def test_trust_like_a_rule_file(tmp_path: Path) -> None:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    path = write(d, "compress: zstd\n")
    assert load_config(path).compress is Compression.ZSTD
    os.chmod(path, 0o666)
    with pytest.raises(ConfigFileError, match="refused: mode 0666 lets group or others write it"):
        load_config(path)
    os.chmod(path, 0o644)
    os.chmod(d, 0o777)
    with pytest.raises(ConfigFileError, match="lets group or others replace rules"):
        load_config(path)
    os.chmod(d, 0o755)
    link = d / "link.yaml"
    link.symlink_to(path)
    with pytest.raises(ConfigFileError, match="a symlink"):
        load_config(str(link))
    with pytest.raises(ConfigFileError, match="No such file"):
        load_config(str(d / "missing.yaml"))
