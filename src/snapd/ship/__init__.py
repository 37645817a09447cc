"""Sending cores elsewhere: bundles, compressed cores, kept binaries, uploads, metrics.

Entry points (the daemon, the catalog and the ctl server call these; nothing here imports them):

- :func:`snapd.ship.bundle.write_bundle` / :func:`~snapd.ship.bundle.open_bundle`
- :func:`snapd.ship.opencore.open_core`: a plain core path from a core, ``.zst`` or bundle
- :func:`snapd.ship.compress.compress_core`: ``CORE`` -> ``CORE.zst`` (holes kept)
- :class:`snapd.ship.elfcache.ElfCache`: the binaries as they ran, by build-id
- :class:`snapd.ship.upload.Uploader`: bundles to S3-compatible storage, resumable
- :class:`snapd.ship.metrics.Metrics`: the Prometheus registry
"""
