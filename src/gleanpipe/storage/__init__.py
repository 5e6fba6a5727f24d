"""Raw store backends, chosen by URL."""

from __future__ import annotations

from ..config import Config, SettingError
from .base import ObjectMissing, RawStore, StoreError

__all__ = ["open_store", "store_scheme", "RawStore", "StoreError", "ObjectMissing"]


def store_scheme(url: str) -> str:
    """"file", "gs" or "s3", once the URL is known to be well-formed; SettingError otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise SettingError(f"store URL must look like file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX, "
                           f"got {url!r}")
    if scheme in ("gs", "s3"):
        from .cloud import parse_location

        parse_location(scheme, rest)
    elif scheme != "file":
        raise SettingError(f"unknown store scheme {scheme!r} in {url!r} (use file://PATH, gs://BUCKET/PREFIX or "
                           "s3://BUCKET/PREFIX)")
    return scheme


def open_store(url: str, config: Config | None = None) -> RawStore:
    """``file://PATH`` (a local folder), ``gs://BUCKET/PREFIX`` (Cloud Storage) or
    ``s3://BUCKET/PREFIX`` (S3). A cloud store takes its timeouts from ``config`` (None: read from
    the environment); the client libraries read their own variables (emulators, credentials)."""
    scheme = store_scheme(url)
    rest = url.partition("://")[2]
    if scheme == "file":
        from .local import LocalStore

        return LocalStore(rest)
    if scheme in ("gs", "s3"):
        from .cloud import CloudOptions, parse_location

        bucket, prefix = parse_location(scheme, rest)
        options = CloudOptions.from_config(config) if config is not None else CloudOptions.from_env()
        try:
            if scheme == "gs":
                from .gcs import GCSStore

                return GCSStore(bucket, prefix, options)
            from .s3 import S3Store
        except ImportError as exc:  # the gcp / aws extra is not installed
            raise ValueError(str(exc)) from None
        return S3Store(bucket, prefix, options)
