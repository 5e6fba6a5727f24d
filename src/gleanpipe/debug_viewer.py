"""`/debug`: the debug ping viewer, a plain WSGI app mounted beside submit (see wsgi_mounts.py).

Pages (rendered on the server, every value HTML-escaped, so they work without JavaScript):
    /debug                  debug tags, newest activity first, with ping counts
    /debug/<tag>            that tag's pings, newest first: status, validation error, metadata, full JSON
JSON API (what the pages poll to stay live):
    /debug/api/tags                       {"tags": [{"tag", "valid", "count", "latest"}], ...}
    /debug/api/tags/<tag>[?after=<id>]    {"tag", "ids": [live ids, newest first], "pings": [details newer than after]}
    /debug/api/tags/<tag>/<id>            one ping's detail
/debug/static/viewer.js and viewer.css: the page script (vanilla JS, builds DOM with textContent only)
and style. No CDN or other network asset. A Content-Security-Policy allows scripts from this
origin only, as a second line of defence against a ping that carries markup.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs

import orjson

from .debug_index import ENTRY_ID_RE, INVALID_GROUP, DebugIndex, is_group
from .storage import RawStore, StoreError

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("debug_static")
STATIC_FILES = {"viewer.js": "text/javascript; charset=utf-8", "viewer.css": "text/css; charset=utf-8"}
POLL_MS = 2000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"),
                    ("Referrer-Policy", "no-referrer")]


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pretty(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


class _NotFound(Exception):
    pass


class DebugViewer:
    def __init__(self, index: DebugIndex, max_payload_bytes: int, prefix: str = "/debug", indexing: bool = True):
        self.index = index
        self.max_payload_bytes = max_payload_bytes
        self.prefix = prefix
        self.indexing = indexing  # GLEANPIPE_DEBUG_INDEX: whether this server's submit adds to the index

    @classmethod
    def from_config(cls, config, store: RawStore) -> "DebugViewer":
        return cls(DebugIndex.from_config(config, store), config.max_payload_bytes, indexing=config.debug_index)

    # --- WSGI -------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        base = environ.get("SCRIPT_NAME", "").rstrip("/")
        path = environ.get("PATH_INFO", "")
        # Mounted by a dispatcher that leaves the prefix in PATH_INFO: move it to the base here.
        if not base.endswith(self.prefix) and (path == self.prefix or path.startswith(self.prefix + "/")):
            base, path = base + self.prefix, path[len(self.prefix):]
        path = path or "/"
        query = parse_qs(environ.get("QUERY_STRING", ""))
        is_api = path.startswith("/api/")
        if method not in ("GET", "HEAD"):
            status, ctype, body, extra = 405, "application/json", orjson.dumps(
                {"error": f"use GET, not {method}"}), [("Allow", "GET, HEAD")]
        else:
            try:
                status, ctype, body, extra = 200, *self._route(path, base, query), []
            except _NotFound as exc:
                status, extra = 404, []
                ctype, body = (("application/json", orjson.dumps({"error": str(exc)})) if is_api else
                               ("text/html; charset=utf-8", self._page(base, "Not found", f"<p>{html.escape(str(exc))}</p>"
                                                                      f'<p><a href="{html.escape(base)}/">All debug tags</a></p>', "")))
            except StoreError as exc:  # its words (folders, buckets, keys) go to the log, as submit's 503 does
                log.warning("debug viewer: store failed: %s", exc)
                status, ctype, extra = 503, "application/json", [("Retry-After", "5")]
                body = orjson.dumps({"error": "the store cannot be read now (see the server's log); retry later"})
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *SECURITY_HEADERS, *extra]
        if ctype.startswith("text/html"):
            headers.append(("Content-Security-Policy", CSP))
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        start_response(f"{status} {reason}", headers)
        return [b"" if method == "HEAD" else body]

    def _route(self, path: str, base: str, query: dict) -> tuple[str, bytes]:
        parts = path.strip("/").split("/") if path.strip("/") else []
        if not parts:
            return "text/html; charset=utf-8", self._tags_page(base)
        if parts[0] == "static" and len(parts) == 2 and parts[1] in STATIC_FILES:
            return STATIC_FILES[parts[1]], (STATIC / parts[1]).read_bytes()
        if parts[0] == "api" and len(parts) > 1:  # /debug/api alone is the page of the tag "api"
            if parts[1:] == ["tags"]:
                return "application/json", orjson.dumps(self.api_tags())
            if len(parts) == 3 and parts[1] == "tags":
                after = (query.get("after") or [""])[0]
                return "application/json", orjson.dumps(self.api_tag(self._group(parts[2]), after))
            if len(parts) == 4 and parts[1] == "tags":
                detail = self._detail(self._group(parts[2]), parts[3])
                return "application/json", orjson.dumps(detail)
            raise _NotFound(f"no API endpoint {path}")
        if len(parts) == 1:
            return "text/html; charset=utf-8", self._tag_page(base, self._group(parts[0]))
        raise _NotFound(f"no page {path}")

    @staticmethod
    def _group(tag: str) -> str:
        if not is_group(tag):
            raise _NotFound("not a debug tag: tags are 1-20 characters of [A-Za-z0-9-]")
        return tag

    def _detail(self, group: str, entry_id: str) -> dict:
        if not ENTRY_ID_RE.fullmatch(entry_id):
            raise _NotFound("not a debug ping id")
        detail = self.index.detail(group, entry_id, self.max_payload_bytes)
        if detail is None:
            raise _NotFound(f"no debug ping {entry_id} under {group} (it may have expired)")
        return detail

    # --- API --------------------------------------------------------------------------

    def api_tags(self) -> dict:
        tags = [{"latest": _iso(t.pop("latest_us")), **t} for t in self.index.tags()]  # popped first
        return {"tags": tags, "max_pings_per_tag": self.index.max_per_tag,
                "retention_hours": self.index.retention_hours, "poll_ms": POLL_MS, "indexing": self.indexing}

    def api_tag(self, group: str, after: str = "") -> dict:
        ids = self.index.entry_ids(group)
        fresh = [i for i in ids if i > after] if ENTRY_ID_RE.fullmatch(after or "") else ids
        pings = [d for d in (self.index.detail(group, i, self.max_payload_bytes) for i in fresh) if d is not None]
        return {"tag": group, "ids": ids, "pings": pings, "poll_ms": POLL_MS}

    # --- pages ------------------------------------------------------------------------

    def _page(self, base: str, title: str, content: str, main_attrs: str) -> bytes:
        b = html.escape(base, quote=True)
        return (
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)} · gleanpipe debug viewer</title>"
            f'<link rel="stylesheet" href="{b}/static/viewer.css"></head><body>'
            f'<header><a href="{b}/">gleanpipe debug ping viewer</a></header>'
            f"<main id=\"viewer\" data-base=\"{b}\" {main_attrs}>{content}</main>"
            f'<script src="{b}/static/viewer.js"></script></body></html>'
        ).encode()

    def _tags_page(self, base: str) -> bytes:
        data = self.api_tags()
        b = html.escape(base, quote=True)
        rows = "".join(
            f'<tr data-tag="{html.escape(t["tag"], quote=True)}"><td><a href="{b}/{html.escape(t["tag"], quote=True)}">'
            f'{html.escape(t["tag"] if t["valid"] else "invalid tags")}</a></td><td>{t["count"]}</td>'
            f"<td>{html.escape(t['latest'])}</td></tr>"
            for t in data["tags"]
        )
        content = (
            "<h1>Debug tags</h1>"
            "<p class=\"hint\">Pings sent with an <code>X-Debug-ID</code> header (Glean: the environment "
            "variable <code>GLEAN_DEBUG_VIEW_TAG</code> for the Python and Rust SDKs, <code>setDebugViewTag</code> "
            "in Kotlin, Swift and JavaScript) are listed here, "
            f"at most {data['max_pings_per_tag']} per tag, for {data['retention_hours']} hours. "
            "This page updates itself.</p>"
            + ("" if self.indexing else "<p class=\"hint\" id=\"off\"><code>GLEANPIPE_DEBUG_INDEX</code> is off: "
               "this server does not add the pings it takes to this list.</p>")
            + f"<p id=\"empty\"{'' if not rows else ' hidden'}>No debug pings yet.</p>"
            + "<table id=\"tags\"><thead><tr><th>tag</th><th>pings</th><th>latest (UTC)</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
        return self._page(base, "Debug tags", content, f'data-mode="tags" data-poll-ms="{POLL_MS}"')

    def _tag_page(self, base: str, group: str) -> bytes:
        data = self.api_tag(group)
        name = "invalid tags" if group == INVALID_GROUP else group
        items = "".join(_render_ping(p) for p in data["pings"])
        note = (" <p class=\"hint\">Requests whose X-Debug-ID is not 1-20 characters of [A-Za-z0-9-]: "
                "the pings were handled as usual, only their tag could not be used.</p>") if group == INVALID_GROUP else ""
        content = (
            f"<h1>Debug tag <code>{html.escape(name)}</code></h1>{note}"
            f"<p id=\"empty\"{'' if not items else ' hidden'}>No pings with this tag yet.</p>"
            f"<ol id=\"pings\">{items}</ol>"
        )
        return self._page(base, name, content,
                          f'data-mode="tag" data-tag="{html.escape(group, quote=True)}" data-poll-ms="{POLL_MS}"')


def _field(label: str, value) -> str:
    return "" if value in (None, "") else f"<dt>{html.escape(label)}</dt><dd>{html.escape(str(value))}</dd>"


def _render_ping(p: dict) -> str:
    """One ping as the page shows it; viewer.js builds the same structure from the API."""
    status = str(p.get("status"))
    head = " ".join(html.escape(str(x)) for x in (p.get("received"), p.get("app_id"), p.get("doc_type")) if x)
    parts = [
        f'<li class="ping {html.escape(status, quote=True)}{" pending" if p.get("pending") else ""}" '
        f'data-id="{html.escape(str(p.get("id")), quote=True)}">',
        f'<div class="head"><span class="status">{html.escape(status)} {html.escape(str(p.get("http_status", "")))}'
        f"</span> <span class=\"what\">{head}</span></div>",
        "<dl>",
        _field("document id", p.get("document_id")),
        _field("debug tag", p.get("tag")),
        _field("object", p.get("object_key")),
        _field("error type", p.get("error_type")),
        _field("error message", p.get("error_message")),
        _field("note", p.get("note")),
        "</dl>",
    ]
    if p.get("ping") is not None:
        parts.append(f'<details open><summary>ping JSON</summary><pre class="json">{html.escape(_pretty(p["ping"]))}</pre></details>')
    elif p.get("body_text") is not None:
        parts.append(f'<details open><summary>body (not JSON)</summary><pre class="json">{html.escape(p["body_text"])}</pre></details>')
    if p.get("metadata") is not None:
        parts.append(f'<details><summary>metadata</summary><pre class="json">{html.escape(_pretty(p["metadata"]))}</pre></details>')
    parts.append("</li>")
    return "".join(parts)
