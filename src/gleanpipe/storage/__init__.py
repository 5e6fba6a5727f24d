"""Raw store backends, chosen by URL."""

from __future__ import annotations

from .base import ObjectMissing, RawStore, StoreError

__all__ = ["open_store", "RawStore", "StoreError", "ObjectMissing"]


def open_store(url: str) -> RawStore:
    """``file://PATH`` (a local folder). Cloud schemes are listed so the error is clear."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError(f"store URL must look like file://PATH, got {url!r}")
    if scheme == "file":
        from .local import LocalStore

        return LocalStore(rest)
    if scheme in ("gs", "s3"):
        raise ValueError(f"{scheme}:// stores are not available in this version of gleanpipe (use file://)")
    raise ValueError(f"unknown store scheme {scheme!r} in {url!r} (use file://PATH)")
