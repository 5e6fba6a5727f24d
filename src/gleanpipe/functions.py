"""The two deployable functions, framework side: Flask request -> submit, CloudEvent -> load.

``functions/main.py`` only decorates these. Backends come from the environment (see
config.py) and are opened once per process, on first use.
"""

from __future__ import annotations

import functools
import logging

from . import notifications
from .config import Config
from .http_edge import SubmitHandler, read_body
from .load import Loader, LoadResult
from .storage import open_store
from .warehouse import open_warehouse

log = logging.getLogger(__name__)

FINALIZED = notifications.FINALIZED


@functools.lru_cache(maxsize=1)
def submit_handler() -> SubmitHandler:
    config = Config.from_env()
    return SubmitHandler(config, open_store(config.store_url))


@functools.lru_cache(maxsize=1)
def loader() -> Loader:
    config = Config.from_env()
    return Loader(open_store(config.store_url), open_warehouse(config.warehouse_url))


def submit(request):
    """HTTP target: a Flask request in, (body, status, headers) out."""
    handler = submit_handler()
    length = request.content_length
    limit = handler.config.max_wire_bytes
    body = read_body(request.stream, length, limit) if length is None or length <= limit else b""
    response = handler.handle(request.method, request.path, request.headers, body, declared_length=length)
    return response.body, response.status, response.headers


def object_name(cloud_event) -> str:
    """The object name of a storage notification CloudEvent (Eventarc or Pub/Sub)."""
    note = notifications.from_cloud_event(cloud_event)
    if not isinstance(note, notifications.Created):
        raise notifications.BadNotification(f"not an object creation: {note.reason}")
    return note.name


def load(cloud_event) -> LoadResult:
    """CloudEvent target: load the object the event names. Raises on transient trouble (retry).

    Accepts ``google.cloud.storage.object.v1.finalized`` (Eventarc) and Cloud Storage
    notifications through Pub/Sub (``google.cloud.pubsub.topic.v1.messagePublished``, which is
    also what functions-framework makes of a raw Pub/Sub push request). Other events, and
    malformed ones (a retry could never help), are logged and acknowledged.
    """
    try:
        note = notifications.from_cloud_event(cloud_event)
    except notifications.BadNotification as exc:
        log.error("ignoring malformed notification (CloudEvent id %s): %s", cloud_event["id"], exc)
        return LoadResult(ignored=1)
    if isinstance(note, notifications.Ignored):
        log.warning("ignoring %s (only object creation is loaded)", note.reason)
        return LoadResult(ignored=1)
    ldr = loader()
    key = ldr.store.object_key(note.bucket, note.name)
    if key is None:
        log.warning("ignoring gs://%s/%s: not in the raw store %s", note.bucket, note.name, ldr.store.url)
        return LoadResult(ignored=1)
    result = ldr.load_keys([key])
    log.info("load %s: %s", key, result.as_dict())
    return result
