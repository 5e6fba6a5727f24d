"""The two deployable functions, framework side: Flask request -> submit, CloudEvent -> load.

``functions/main.py`` only decorates these. Backends come from the environment (see
config.py) and are opened once per process, on first use.
"""

from __future__ import annotations

import functools
import logging

from .config import Config
from .http_edge import SubmitHandler, read_body
from .load import Loader, LoadResult
from .storage import open_store
from .warehouse import open_warehouse

log = logging.getLogger(__name__)

FINALIZED = "google.cloud.storage.object.v1.finalized"


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
    """The object key of a storage-finalized CloudEvent."""
    data = cloud_event.data if hasattr(cloud_event, "data") else cloud_event["data"]
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError("CloudEvent data has no object name")
    return data["name"]


def load(cloud_event) -> LoadResult:
    """CloudEvent target: load the object the event names. Raises on transient trouble (retry)."""
    event_type = cloud_event["type"]
    if event_type != FINALIZED:
        log.warning("ignoring CloudEvent of type %s", event_type)
        return LoadResult(ignored=1)
    result = loader().load_keys([object_name(cloud_event)])
    log.info("load %s: %s", object_name(cloud_event), result.as_dict())
    return result
