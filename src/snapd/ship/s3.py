"""The S3 client (boto3) and what its failures mean, as one line an operator can act on."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from snapd.ship.config import UploadConfig
from snapd.ship.errors import StoreUnavailable

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}


def make_client(cfg: UploadConfig) -> Any:
    """A boto3 S3 client for ``cfg``; our own code retries (with backoff), so boto3 does not."""
    cred = cfg.read_credentials()
    session = boto3.session.Session(
        aws_access_key_id=cred.access_key if cred else None,
        aws_secret_access_key=cred.secret_key if cred else None,
        aws_session_token=cred.session_token if cred else None,
        region_name=cfg.region,
    )
    conf = botocore.config.Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"total_max_attempts": 1},
        s3={"addressing_style": "path" if cfg.endpoint else "auto"},
        # S3-compatible stores vary in which checksum headers they take; send them only when
        # the operation needs one (botocore's pre-2025 behaviour).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", endpoint_url=cfg.endpoint, config=conf)


def error_code(err: BaseException) -> str:
    if isinstance(err, botocore.exceptions.ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def explain(err: BaseException, cfg: UploadConfig, what: str) -> StoreUnavailable:
    """Turn a boto3/botocore failure into a one-line :class:`StoreUnavailable`."""
    where = cfg.endpoint or "AWS S3"
    cred = cfg.credentials or "the AWS credential chain"
    if isinstance(err, botocore.exceptions.NoCredentialsError):
        return StoreUnavailable(
            what, "no credentials: set upload.credentials or the AWS environment", code="NoCredentials"
        )
    if isinstance(err, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError)):
        return StoreUnavailable(what, f"cannot reach {where}: {_short(err)}", code="Unreachable")
    if isinstance(err, (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectTimeoutError)):
        return StoreUnavailable(what, f"{where} timed out", code="Timeout")
    code = error_code(err)
    if code in _CREDENTIAL_CODES:
        return StoreUnavailable(what, f"{where} rejected the credentials ({code}): check {cred}", code=code)
    if code == "NoSuchBucket":
        return StoreUnavailable(
            what, f"bucket '{cfg.bucket}' does not exist on {where}: create it", code=code
        )
    if isinstance(err, botocore.exceptions.ClientError):
        msg = err.response.get("Error", {}).get("Message", "") or str(err)
        return StoreUnavailable(what, f"{where}: {code}: {msg}", code=code)
    if isinstance(err, botocore.exceptions.BotoCoreError):
        return StoreUnavailable(what, f"{where}: {_short(err)}", code=type(err).__name__)
    return StoreUnavailable(what, f"{type(err).__name__}: {err}", code=type(err).__name__)


def _short(err: BaseException) -> str:
    s = str(err)
    return s if len(s) < 200 else s[:200] + "..."
