"""Raw store backends, chosen by URL."""

from __future__ import annotations

from .base import ObjectMissing, RawStore, StoreError

__all__ = ["open_store", "RawStore", "StoreError", "ObjectMissing"]


def open_store(url: str) -> RawStore:
    """``file://PATH`` (a local folder), ``gs://BUCKET/PREFIX`` (Cloud Storage) or
    ``s3://BUCKET/PREFIX`` (S3). Settings and emulator variables are read from the environment."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError(f"store URL must look like file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX, got {url!r}")
    if scheme == "file":
        from .local import LocalStore

        return LocalStore(rest)
    if scheme in ("gs", "s3"):
        from .cloud import parse_location

        bucket, prefix = parse_location(scheme, rest)
        try:
            if scheme == "gs":
                from .gcs import GCSStore

                return GCSStore(bucket, prefix)
            from .s3 import S3Store
        except ImportError as exc:  # the gcp / aws extra is not installed
            raise ValueError(str(exc)) from None
        return S3Store(bucket, prefix)
    raise ValueError(f"unknown store scheme {scheme!r} in {url!r} (use file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX)")
