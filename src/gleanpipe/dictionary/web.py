"""WSGI app for /dictionary, mounted in front of the submit edge by `gleanpipe serve`.

The HTTP workers cannot open the DuckDB file (serve's main process holds it), so they read
through serve's admin API (``AdminClient.query``), found from ``<data dir>/serve.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import orjson

from ..admin import AdminClient, QueryRefused, ResultTooLarge, ServeError, ServeFailed
from ..jsonvalues import dumps
from .catalog import Catalog, NotFound
from .site import RENDER, data_for, route

PREFIX = "/dictionary"
log = logging.getLogger("gleanpipe.dictionary")


class Unavailable(RuntimeError):
    pass


def admin_query(data_dir: Path) -> Callable:
    """A query callable through the running serve, looked up at each request (serve restarts)."""
    def query(sql, params=None):
        try:
            client = AdminClient.find(data_dir)
            if client is None:
                raise Unavailable("the warehouse is not reachable: is `gleanpipe serve` running?")
            return client.query(sql, params)
        except ResultTooLarge as exc:  # as below, in words for a reader who wrote no SQL (not "add a LIMIT")
            raise exc.for_user_of("this page's data", "`gleanpipe dictionary build`") from None
        except (QueryRefused, ServeFailed):  # the catalog's query failed, or serve failed
            raise  # on it: a 500 that says why, not "the warehouse is not reachable"
        except (OSError, ServeError) as exc:
            raise Unavailable(f"the warehouse is not reachable: {exc}") from None
    return query


def make_dictionary_app(query: Callable, prefix: str = PREFIX) -> Callable:
    def app(environ: dict, start_response: Callable):
        script, path = environ.get("SCRIPT_NAME", "").rstrip("/"), environ.get("PATH_INFO", "")
        if not script.endswith(prefix):  # called with the full path (not through a mounting dispatcher)
            script, path = script + prefix, path[len(prefix):] if path.startswith(prefix) else path
        if not path:  # relative links need the trailing slash
            start_response("301 Moved Permanently", [("Location", script + "/"), ("Content-Length", "0")])
            return [b""]
        rel = path[1:]
        found = route(rel)
        is_api = rel.startswith("api/")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _send(start_response, 405, is_api, "only GET and HEAD", [("Allow", "GET, HEAD")])
        if found is None:
            return _send(start_response, 404, is_api, f"no page {rel!r}")
        kind, args = found
        try:
            data = data_for(Catalog(query), kind, args)
            if kind.startswith("api:"):
                body, ctype = dumps(data), "application/json"
            else:  # in the try: a page that fails to render is a 500 that says why, as a failed query is
                body, ctype = RENDER[kind](data).encode(), "text/html; charset=utf-8"
        except NotFound as exc:
            return _send(start_response, 404, is_api, str(exc))
        except Unavailable as exc:
            return _send(start_response, 503, is_api, str(exc))
        except ResultTooLarge as exc:  # serve's own limit (GLEANPIPE_QUERY_MAX_BYTES), not a bug: one line, no
            # traceback. A 5xx: the request (a GET, no content) is not at fault and no other request would do
            # better; a 413 ("Content Too Large") is for a request's content, and a 4xx hid the fault from
            # whoever watches serve's 5xx while every reader got the error page.
            log.warning("dictionary page %s: %s", path, exc)
            return _send(start_response, 500, is_api, str(exc))
        except Exception as exc:  # a query that failed: say so, never a bare 500 without a body
            log.exception("dictionary page %s failed", path)
            return _send(start_response, 500, is_api, f"{type(exc).__name__}: {exc}")
        start_response("200 OK", _headers(ctype, body))
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    return app


SECURITY_HEADERS = [
    # Inline scripts are ours; nothing may load from elsewhere.
    ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
]


def _headers(ctype: str, body: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", ctype), ("Content-Length", str(len(body)))] + SECURITY_HEADERS


def _send(start_response, status: int, is_api: bool, message: str, extra=()):
    text = {404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error", 503: "Service Unavailable"}
    if is_api:
        body, ctype = orjson.dumps({"error": message}), "application/json"
    else:
        from html import escape

        body = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{status}</title></head><body>"
                f"<h1>{status} {text[status]}</h1><p>{escape(message)}</p>"
                "<p><a href=\"/dictionary/\">Dictionary</a></p></body></html>").encode()
        ctype = "text/html; charset=utf-8"
    start_response(f"{status} {text[status]}", _headers(ctype, body) + list(extra))
    return [body]
