"""``s3://BUCKET/PREFIX``: an Amazon S3 (or S3-compatible) bucket, through boto3.

Create-only writes are ``PutObject`` with ``If-None-Match: *`` (S3 conditional writes): a
second writer of the same key gets 412, which ``put_new`` reports as False. A 409 (S3's
answer while a competing conditional write is in flight) is retried, and then finds the
winner's object (412). The body carries its CRC32 checksum, which S3 verifies.

Configuration is boto3's own: credentials from the usual chain (env, profile, role), region
from ``AWS_REGION``/``AWS_DEFAULT_REGION`` (us-east-1 when none is set), and the endpoint from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (an emulator such as moto, or MinIO). With an
endpoint set and no credentials anywhere, requests are signed with the placeholder keys
EMULATOR_KEYS: emulators such as moto take any keys, but not unsigned requests (moto answers an
unsigned conditional PUT of an existing key 403, and files unsigned SQS calls under another
account, so the queue looked empty).
The client is made once per store; boto3 clients are thread-safe.
"""

from __future__ import annotations

import os

from .base import ObjectMissing, StoreError
from .cloud import POOL_SIZE, TRANSIENT_STATUS, CloudOptions, CloudStore

try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError
    from botocore.exceptions import (ConnectTimeoutError, EndpointConnectionError, HTTPClientError,
                                     ReadTimeoutError, ResponseStreamingError)
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"s3:// stores need the aws extra: pip install 'gleanpipe[aws]' ({exc})") from exc

EMULATOR_KEYS = ("gleanpipe-emulator", "gleanpipe-emulator")  # only with an endpoint set and no credentials
DEFAULT_REGION = "us-east-1"


def endpoint_configured(service: str) -> bool:
    return bool(os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL"))


def make_client(service: str, options: CloudOptions, read_timeout_s: float | None = None):
    """A boto3 client with our timeouts and no retries of its own (see cloud.with_retries)."""
    session = boto3.session.Session()
    config = BotoConfig(connect_timeout=options.timeout_s, read_timeout=read_timeout_s or options.timeout_s,
                        retries={"total_max_attempts": 1}, max_pool_connections=POOL_SIZE)
    keys = {}
    if session.get_credentials() is None and endpoint_configured(service):
        keys = dict(zip(("aws_access_key_id", "aws_secret_access_key"), EMULATOR_KEYS))
    # AWS_REGION too, as the newer AWS SDKs and Lambda set it (this boto3 reads only AWS_DEFAULT_REGION)
    region = os.environ.get("AWS_REGION") or session.region_name or DEFAULT_REGION
    return session.client(service, region_name=region, config=config, **keys)


def error_code(exc: BaseException) -> str:
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def transient(exc: BaseException) -> bool:
    # HTTPClientError: the connection broke mid-request (ConnectionClosedError: the endpoint went
    # away during an SQS long poll), as opposed to an answer that says no
    if isinstance(exc, (BotoConnectionError, EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                        ResponseStreamingError, HTTPClientError)):
        return True
    return http_status(exc) in TRANSIENT_STATUS or error_code(exc) in ("SlowDown", "RequestTimeout")


def describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"HTTP {http_status(exc)} {err.get('Code', '')}: {err.get('Message', '')}"[:300]
    if isinstance(exc, BotoCoreError):
        return str(exc)[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


class S3Store(CloudStore):
    scheme = "s3"
    _transient = staticmethod(transient)
    _describe = staticmethod(describe)

    def __init__(self, bucket: str, prefix: str, options: CloudOptions | None = None):
        super().__init__(bucket, prefix, options)
        self._client = make_client("s3", self.options)

    def put_new(self, key: str, data: bytes, *, notify: bool = True) -> bool:
        name = self._name(key)

        def put() -> bool:
            try:
                self._client.put_object(Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*",
                                        ContentType="application/octet-stream", ChecksumAlgorithm="CRC32")
            except ClientError as exc:
                if http_status(exc) == 412 or error_code(exc) == "PreconditionFailed":
                    return False
                raise
            return True

        def put_transient(exc: BaseException) -> bool:
            return transient(exc) or error_code(exc) == "ConditionalRequestConflict" or http_status(exc) == 409

        return self._retry(f"cannot write {self.url}/{key}", put, put_transient)

    def get(self, key: str) -> bytes:
        name = self._name(key)

        def read() -> bytes:
            try:
                return self._client.get_object(Bucket=self.bucket, Key=name)["Body"].read()
            except ClientError as exc:
                if error_code(exc) in ("NoSuchKey", "404"):
                    raise ObjectMissing(f"no object {key} in {self.url}") from None
                raise

        return self._retry(f"cannot read {self.url}/{key}", read)

    def delete(self, key: str) -> None:
        """Remove the object (housekeeping only); no error if there is none (S3's own rule)."""
        name = self._name(key)
        self._retry(f"cannot delete {self.url}/{key}", lambda: self._client.delete_object(Bucket=self.bucket, Key=name))

    def _list_page(self, name_prefix: str, token: str | None) -> tuple[list[str], str | None]:
        args = {"Bucket": self.bucket, "Prefix": name_prefix, "MaxKeys": self.list_page_size}
        if token:
            args["ContinuationToken"] = token
        page = self._client.list_objects_v2(**args)
        names = [item["Key"] for item in page.get("Contents", [])]
        return names, page.get("NextContinuationToken") if page.get("IsTruncated") else None

    def close(self) -> None:
        self._client.close()


__all__ = ["S3Store", "StoreError", "make_client"]
