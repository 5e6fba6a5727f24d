"""The deployable functions, framework side: Flask request -> submit, CloudEvent -> load,
Flask request -> deletions (retry pending deletion requests; called by Cloud Scheduler).

``functions/main.py`` only decorates these. Backends come from the environment (see
config.py) and are opened once per process, on first use.
"""

from __future__ import annotations

import functools
import logging
import threading

import flask
import orjson
from werkzeug.exceptions import ServiceUnavailable

from . import notifications
from .config import SETTINGS, Config, unknown_settings
from .http_edge import (ALLOW_ORIGIN, SubmitHandler, closes_connection, force_close, is_submit_path, preflight,
                        read_request_body)
from .linger import lingering
from .load import Loader, LoadResult
from .storage import StoreError, open_store
from .warehouse import Warehouse, WarehouseUnavailable, open_warehouse

log = logging.getLogger(__name__)


def _once(build):
    """``build()`` the first time, under a lock, then what it gave. functions-framework answers
    requests on several threads: lru_cache alone let each of the first ones build its own, and
    the loaders' DuckDB setup on one file conflicted (a 500 with a traceback per delivery)."""
    lock = threading.Lock()

    @functools.wraps(build)
    def get():
        with lock:
            return cached()

    cached = functools.lru_cache(maxsize=1)(build)
    get.cache_clear, get.cache_info = cached.cache_clear, cached.cache_info
    return get


@functools.lru_cache(maxsize=1)
def _config_checked() -> None:
    """Once per process: a GLEANPIPE_* variable that is no setting (a typo in the function's
    environment) is logged, as the CLI warns of it."""
    for said in unknown_settings():
        log.warning("%s", said)


def _config() -> Config:
    _config_checked()
    return Config.from_env()


@_once
def submit_handler() -> SubmitHandler:
    config = _config()
    return SubmitHandler(config, open_store(config.store_url, config))


@_once
def loader() -> Loader:
    config = _config()
    return Loader(open_store(config.store_url, config), open_warehouse(config.warehouse_url, config=config))


def submit(request):
    """HTTP target: a Flask request in, (body, status, headers) out."""
    # the path as the server got it, as serve sees it (Flask's request.path drops a leading "//")
    path = request.environ.get("PATH_INFO", request.path)
    try:
        handler = submit_handler()
    except Exception as exc:  # noqa: BLE001 - a bad setting or store URL: nothing the client did
        request._cached_data = b""  # functions-framework would read the whole body (see below)
        if request.method == "OPTIONS" and is_submit_path(path):  # a preflight needs no settings
            answer = preflight(request.headers.get("Access-Control-Request-Headers"))
            return _Closing(answer.body, answer.status, answer.headers)
        # 503, not the framework's 500 page: the SDK keeps the ping and retries once this is fixed.
        log.error("submit cannot take pings until its settings are fixed: %s", exc)
        body, status, headers = _json({"error_type": "misconfigured",
                                       "error_message": "the server cannot take pings now (see its log), retry later"},
                                      503)
        headers["Retry-After"] = "60"
        if is_submit_path(path):  # a browser's Glean.js reads the 503 (and retries) only with this
            headers[ALLOW_ORIGIN[0]] = ALLOW_ORIGIN[1]
        return _Closing(body, status, headers)  # the body is left unread
    length = request.content_length
    body, problem = read_request_body(handler, request.stream, length, request.environ.get("gunicorn.socket"))
    # functions-framework reads "the entire request" after every answer (its after_request hook
    # read_request: flask.request.get_data()). That would read a body refused for its declared
    # size whole into memory (200 MB declared: 250 MB peak, before the 413 went out), and read on
    # without a deadline after a body timed out. What was read here stands for the body instead.
    request._cached_data = body
    response = handler.handle(request.method, path, request.headers, body, declared_length=length,
                              body_problem=problem, raw_uri=request.environ.get("RAW_URI"))
    if closes_connection(handler, length, body, problem):
        closing = _Closing(response.body, response.status, response.headers)
        closing.linger_s = handler.config.linger_s
        return closing
    return response.body, response.status, response.headers


class _Closing(flask.Response):
    """An answer after which the connection closes (``closes_connection``). The view never sees
    the server's start_response, so the answer itself asks the server to close, and to say
    ``Connection: close``, when Flask hands it over (``force_close``; the hop-by-hop header is the
    server's to send, as in ``make_wsgi_app``), and lingers once it is written (linger.py: the
    client may still be sending the body left unread)."""

    linger_s = float(SETTINGS["GLEANPIPE_LINGER_S"].default)  # when the settings could not be read

    def __call__(self, environ, start_response):
        force_close(start_response)
        return lingering(super().__call__(environ, start_response), environ, self.linger_s)


class _RetryLater(ServiceUnavailable):
    """503 for the trigger to retry, with one log line instead of the framework's 500 page and
    a traceback on every delivery."""


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
    try:
        ldr = loader()
    except (ValueError, StoreError, WarehouseUnavailable) as exc:  # a bad setting, or a backend out of reach
        log.error("load cannot run until this is fixed (the trigger retries): %s", exc)
        raise _RetryLater("load cannot run now (see its log)") from None
    key = ldr.store.object_key(note.bucket, note.name)
    if key is None:
        log.warning("ignoring gs://%s/%s: not in the raw store %s", note.bucket, note.name, ldr.store.url)
        return LoadResult(ignored=1)
    try:
        result = ldr.load_keys([key])
    except (StoreError, WarehouseUnavailable) as exc:
        log.warning("load of %s failed, the trigger retries: %s", key, exc)
        raise _RetryLater(f"load of {key} failed (see the log)") from None
    log.info("load %s: %s", key, result.as_dict())
    return result


@_once
def deletions_warehouse() -> Warehouse:
    config = _config()
    return open_warehouse(config.warehouse_url, config=config)


def _json(body: dict, status: int):
    return orjson.dumps(body), status, {"Content-Type": "application/json"}


def _deletions_later(exc: WarehouseUnavailable):
    log.warning("deletions: warehouse unavailable, pending requests stay recorded: %s", exc)
    return _json({"error_type": "warehouse_unavailable", "error_message": str(exc)}, 503)


def deletions(request):
    """HTTP target: what `gleanpipe deletions` does, for a scheduler. POST only.

    200 with a summary when every pending request was tried (those BigQuery still refuses stay
    pending, recorded, for the next run); 503 when the warehouse cannot be reached or is locked,
    so Cloud Scheduler retries. Client ids are left out of the answer and the log: the request
    is to forget that client.
    """
    if request.method != "POST":
        return _json({"error_type": "method", "error_message": "use POST"}, 405)
    try:
        config = _config()
        url = config.warehouse_url
        # A DuckDB file has one writer process: hold it only for this run, so `serve` or a later
        # load can open it. A BigQuery client is kept for the next run.
        local = url.startswith("duckdb://")
        wh = open_warehouse(url, config=config) if local else deletions_warehouse()
    except ValueError as exc:  # a bad setting: 503 (the scheduler retries once it is fixed), not a 500 traceback
        log.error("deletions cannot run until its settings are fixed: %s", exc)
        return _json({"error_type": "misconfigured",
                      "error_message": "the server cannot run deletions now (see its log), retry later"}, 503)
    except WarehouseUnavailable as exc:
        return _deletions_later(exc)
    try:
        attempts = wh.retry_deletions()
    except WarehouseUnavailable as exc:
        return _deletions_later(exc)
    finally:
        if local:
            wh.close()
    done = [a for a in attempts if a.done]
    summary = {
        "warehouse": wh.url,
        "carried_out": len(done),
        "still_pending": len(attempts) - len(done),
        "rows_deleted": sum(a.rows_deleted for a in attempts),
        "requests": [{"dataset": a.dataset, "document_id": a.document_id, "done": a.done,
                      "rows_deleted": a.rows_deleted, "error": a.error} for a in attempts],
    }
    log.info("deletions: %d carried out, %d still pending", summary["carried_out"], summary["still_pending"])
    return _json(summary, 200)
