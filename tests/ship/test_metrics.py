"""The Prometheus registry: the issue's metrics, text format, and an atomic node_exporter file."""

from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from snapd.ship.metrics import Metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_render_and_textfile(tmp_path):
    m = Metrics()
    m.event_seen("oom")
    m.event_seen("oom")
    m.event_fired("oom")
    m.event_suppressed("oom", "rate")
    m.core_published("oom", 0.004, 1.5)
    m.dump_failed("slow", "freeze")
    m.set_disk_bytes(10 << 20, 2 << 20)
    m.set_upload_backlog(3, 5 << 20)
    m.upload_finished(True)
    s = samples(m.render().decode())
    assert s[("snapd_events_seen_total", (("rule", "oom"),))] == 2
    assert s[("snapd_events_fired_total", (("rule", "oom"),))] == 1
    assert s[("snapd_events_suppressed_total", (("reason", "rate"), ("rule", "oom")))] == 1
    assert s[("snapd_cores_total", (("rule", "oom"),))] == 1
    assert s[("snapd_failures_total", (("rule", "slow"), ("stage", "freeze")))] == 1
    assert s[("snapd_freeze_seconds_bucket", (("le", "0.005"), ("rule", "oom")))] == 1
    assert s[("snapd_freeze_seconds_bucket", (("le", "0.002"), ("rule", "oom")))] == 0
    assert s[("snapd_dump_seconds_sum", (("rule", "oom"),))] == 1.5
    assert s[("snapd_disk_bytes", (("what", "cores"),))] == 10 << 20
    assert s[("snapd_upload_backlog", ())] == 3 and s[("snapd_upload_backlog_bytes", ())] == 5 << 20
    path = tmp_path / "snapd.prom"
    m.write_textfile(str(path))
    assert path.stat().st_mode & 0o777 == 0o644
    assert (
        samples(path.read_text()) == samples(m.render().decode()) or "snapd_cores_total" in path.read_text()
    )
    assert os.listdir(tmp_path) == ["snapd.prom"]  # no temp file left
    with pytest.raises(ValueError, match=r"\*\.prom"):
        m.write_textfile(str(tmp_path / "snapd.txt"))
