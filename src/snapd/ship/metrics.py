"""The daemon's Prometheus metrics (issue 13 §4), in a registry of their own.

The daemon calls the ``Metrics`` methods where things happen; ``snapd ctl metrics`` prints
:meth:`Metrics.render`, and a configured node_exporter textfile (its textfile collector reads
``*.prom`` files in one directory) is kept current with :meth:`Metrics.write_textfile`, replaced
atomically so the collector never reads half a file.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from snapd.ship.publish import write_bytes_atomic

#: freezes are milliseconds; a frozen-mode dump of a big process can take seconds
FREEZE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
DUMP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.events_seen = Counter(
            "snapd_events_seen", "Events a rule's probes reported", ["rule"], registry=r
        )
        self.events_fired = Counter("snapd_events_fired", "Events that started a dump", ["rule"], registry=r)
        self.events_suppressed = Counter(
            "snapd_events_suppressed",
            "Events that matched but took no core (rate limit, pause, max cores, disk)",
            ["rule", "reason"],
            registry=r,
        )
        self.cores = Counter("snapd_cores", "Cores published", ["rule"], registry=r)
        self.failures = Counter("snapd_failures", "Dumps that failed", ["rule", "stage"], registry=r)
        self.freeze_seconds = Histogram(
            "snapd_freeze_seconds",
            "How long targets were halted",
            ["rule"],
            buckets=FREEZE_BUCKETS,
            registry=r,
        )
        self.dump_seconds = Histogram(
            "snapd_dump_seconds",
            "Whole dumps, halt to published file",
            ["rule"],
            buckets=DUMP_BUCKETS,
            registry=r,
        )
        self.disk_bytes = Gauge("snapd_disk_bytes", "Bytes on disk", ["what"], registry=r)
        self.upload_backlog = Gauge("snapd_upload_backlog", "Bundles waiting to be uploaded", registry=r)
        self.upload_backlog_bytes = Gauge(
            "snapd_upload_backlog_bytes", "Bytes waiting to be uploaded", registry=r
        )
        self.uploads = Counter("snapd_uploads", "Uploads finished", ["result"], registry=r)

    # --- what the daemon calls ----------------------------------------------------------------
    def event_seen(self, rule: str) -> None:
        self.events_seen.labels(rule).inc()

    def event_fired(self, rule: str) -> None:
        self.events_fired.labels(rule).inc()

    def event_suppressed(self, rule: str, reason: str) -> None:
        self.events_suppressed.labels(rule, reason).inc()

    def core_published(self, rule: str, freeze_seconds: float, dump_seconds: float) -> None:
        self.cores.labels(rule).inc()
        self.freeze_seconds.labels(rule).observe(freeze_seconds)
        self.dump_seconds.labels(rule).observe(dump_seconds)

    def dump_failed(self, rule: str, stage: str) -> None:
        self.failures.labels(rule, stage).inc()

    def set_disk_bytes(self, cores: int, elf_cache: int = 0) -> None:
        self.disk_bytes.labels("cores").set(cores)
        self.disk_bytes.labels("elf_cache").set(elf_cache)

    def set_upload_backlog(self, jobs: int, pending_bytes: int) -> None:
        self.upload_backlog.set(jobs)
        self.upload_backlog_bytes.set(pending_bytes)

    def upload_finished(self, ok: bool) -> None:
        self.uploads.labels("ok" if ok else "failed").inc()

    # --- output -------------------------------------------------------------------------------
    def render(self) -> bytes:
        """Prometheus text exposition format (version 0.0.4)."""
        return bytes(generate_latest(self.registry))

    def write_textfile(self, path: str) -> None:
        """Replace ``path`` (a ``*.prom`` file for node_exporter) atomically, mode 0644."""
        if not path.endswith(".prom"):
            raise ValueError(f"{path}: node_exporter's textfile collector reads only *.prom files")
        write_bytes_atomic(os.path.abspath(path), self.render(), mode=0o644)
