"""The raw store interface: create-only objects under keys, plus listing.

A backend promises two things the whole pipeline rests on:
- ``put_new`` returns only once the object is durable, and never overwrites: a second
  write of the same key returns False (edge dedupe) without touching the first.
- failures raise ``StoreError`` so the edge can answer 503 and the SDK retries.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator

KEY_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def is_safe_key(key: str) -> bool:
    """A key every store takes: ``/``-separated parts of A-Z a-z 0-9 ``. _ -``, none of them starting
    with ``.``: no ``.`` or ``..`` (out of the store) and no hidden name (a local store keeps its own
    folders, .inbox .tmp .spool, under such names). gleanpipe's own keys (raw/, errors/, debug/)
    start every part with a letter, digit or ``_``."""
    return KEY_RE.fullmatch(key) is not None and not key.startswith(".") and "/." not in key


def check_key(key: str) -> str:
    """``key``, or ValueError if it is not safe (is_safe_key): the same refusal from every store."""
    if not is_safe_key(key):
        raise ValueError(f"unsafe object key: {key!r}")
    return key


class StoreError(RuntimeError):
    """The store could not do what was asked (disk full, permission, network...)."""


class ObjectMissing(StoreError):
    """get() of a key that does not exist."""


class RawStore(ABC):
    url: str

    @abstractmethod
    def put_new(self, key: str, data: bytes, *, notify: bool = True) -> bool:
        """Write ``data`` under ``key`` only if no object is there. True if written.

        ``notify`` asks the backend to tell the loader about the new object; cloud
        backends do that through their own notifications and ignore it.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectMissing if there is none."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, in sorted order."""

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; no error if there is none.

        Only housekeeping uses it (the bounded ``debug/`` index); raw pings are never deleted.
        """
        raise StoreError(f"{type(self).__name__} cannot delete objects")

    def pending(self, limit: int) -> list[tuple[str, str]]:
        """(receipt, key) of objects written with notify=True and not yet acknowledged.

        Only backends that deliver their own notifications in-process (the local
        folder) implement this; the others return [] (their trigger is the cloud's).
        """
        return []

    def ack(self, receipts: list[str]) -> None:
        """Forget pending notifications once their objects are loaded."""

    def receipt_age(self, receipt: str) -> float:
        """Seconds since the pending notification was written."""
        return float("inf")

    def object_key(self, bucket: str | None, name: str) -> str | None:
        """The key of object ``name`` in ``bucket`` (None: not said) as named by a storage
        notification, or None when that object is not in this store (another bucket, or outside
        the store's prefix). A local folder has no bucket name: every name is its own key."""
        return name

    def close(self) -> None:
        """Release connections (cloud backends)."""
