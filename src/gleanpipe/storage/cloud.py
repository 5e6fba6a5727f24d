"""What the gs:// and s3:// stores share: URL parsing, the key prefix, timeouts and retries.

A cloud store is ``<scheme>://BUCKET/PREFIX``. Keys are the pipeline's keys
(``raw/<app>/<doc-type>/<version>/<document-id>.json``); the object name in the bucket is
``PREFIX/`` + key. ``list`` takes and returns keys, never object names.

Retries are ours, not the client libraries' (theirs run for minutes by default): a call is
retried on transient trouble (HTTP 408/429/5xx, connection errors, timeouts) for at most
GLEANPIPE_STORE_RETRY_S seconds with doubling pauses, then raises StoreError so the edge
answers 503 and the Glean SDK retries later. A create-only write whose first attempt
reached the store but whose answer was lost comes back as "already there" (False) on the
retry: the object is stored either way.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ..config import SETTINGS, Config, SettingError
from .base import RawStore, StoreError, check_key

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bucket names both services accept (lower-case letters, digits, dots, dashes, underscores).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
PREFIX_RE = re.compile(r"[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
POOL_SIZE = 32  # connections a store's client keeps open to its service (threads that call it at once)


@dataclass(frozen=True)
class CloudOptions:
    """GLEANPIPE_STORE_TIMEOUT_S and GLEANPIPE_STORE_RETRY_S, as config.py read and checked them."""

    timeout_s: float = float(SETTINGS["GLEANPIPE_STORE_TIMEOUT_S"].default)
    retry_s: float = float(SETTINGS["GLEANPIPE_STORE_RETRY_S"].default)

    @classmethod
    def from_config(cls, config: Config) -> "CloudOptions":
        return cls(timeout_s=config.store_timeout_s, retry_s=config.store_retry_s)

    @classmethod
    def from_env(cls, environ=None) -> "CloudOptions":
        return cls.from_config(Config.from_env(environ))


class CloudStore(RawStore):
    """What GCSStore and S3Store share: bucket, key prefix (``""`` or ending in ``/``), URL, options,
    object names, retries and the listing loop. A store gives its service's ``_transient`` and
    ``_describe`` (see with_retries) and ``_list_page``."""

    scheme: str
    list_page_size = 1000  # names per listing request (the maximum of both services)

    def __init__(self, bucket: str, prefix: str, options: CloudOptions | None = None):
        self.bucket, self.prefix = bucket, prefix
        self.url = f"{self.scheme}://{bucket}/{prefix}".rstrip("/")
        self.options = options or CloudOptions.from_env()

    def object_key(self, bucket: str | None, name: str) -> str | None:
        if (bucket is not None and bucket != self.bucket) or not name.startswith(self.prefix):
            return None
        return name[len(self.prefix):]

    def _name(self, key: str) -> str:
        """The object name of ``key`` in the bucket; ValueError for an unsafe key."""
        return self.prefix + check_key(key)

    @staticmethod
    def _transient(exc: BaseException) -> bool:
        raise NotImplementedError

    @staticmethod
    def _describe(exc: BaseException) -> str:
        raise NotImplementedError

    def _retry(self, what: str, call: Callable[[], T], transient: Callable[[BaseException], bool] | None = None) -> T:
        """with_retries for this store: its service's transient errors (or ``transient``), its retry time."""
        return with_retries(what, call, transient or self._transient, self.options.retry_s, self._describe)

    def _connect(self) -> None:
        """Make the client, where a store makes it on first use."""

    def _list_page(self, name_prefix: str, token: str | None) -> tuple[list[str], str | None]:
        """One listing request: the object names under ``name_prefix`` from ``token`` on (None: the
        start), and the token of the next page (None: this was the last)."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in the service's order (by UTF-8 bytes, as sorted() orders them), page by page."""
        self._connect()
        token = None
        while True:
            names, token = self._retry(f"cannot list {self.url}/{prefix}",
                                       lambda token=token: self._list_page(self.prefix + prefix, token))
            for name in names:
                yield name[len(self.prefix):]
            if not token:
                return


def parse_location(scheme: str, rest: str) -> tuple[str, str]:
    """``bucket/some/prefix`` -> ("bucket", "some/prefix/"); ``bucket`` -> ("bucket", "")."""
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not BUCKET_RE.fullmatch(bucket):
        raise SettingError(f"{scheme}:// store URL needs a bucket name (3-222 of a-z 0-9 . - _), got {bucket!r}")
    if prefix and (not PREFIX_RE.fullmatch(prefix) or any(p in (".", "..") for p in prefix.split("/"))):
        raise SettingError(f"{scheme}:// store prefix may hold only A-Z a-z 0-9 . _ = - and /, got {prefix!r}")
    return bucket, f"{prefix}/" if prefix else ""


def with_retries(what: str, call: Callable[[], T], is_transient: Callable[[BaseException], bool],
                 retry_s: float, describe: Callable[[BaseException], str] = str) -> T:
    """``call()``; transient failures are retried until ``retry_s`` has passed, then StoreError."""
    deadline = time.monotonic() + retry_s
    pause = 0.1
    attempt = 1
    while True:
        try:
            return call()
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified right below
            transient = is_transient(exc)
            if not transient or time.monotonic() + pause > deadline:
                tail = f" (gave up after {attempt} attempts)" if transient and attempt > 1 else ""
                raise StoreError(f"{what}: {describe(exc)}{tail}") from exc
            log.info("%s: %s; retrying in %.1fs", what, describe(exc), pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            attempt += 1
