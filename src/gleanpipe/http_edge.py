"""The submit edge: checks a request and stores it, answering the way the Glean SDK needs.

Status codes (the SDK deletes a ping on any 4xx and retries on 5xx):
  200 stored (or already stored under the same document id: nothing new is written)
  400 bad ping: path segment, empty body, bad gzip, a Content-Encoding other than gzip (and a body
      that is not plain JSON), Content-Encoding gzip on a body that is neither gzip nor JSON, not
      JSON, JSON nested deeper than MAX_JSON_DEPTH (nesting.py), not a Glean ping; or a body that
      did not arrive whole (the connection ended early, or its framing is broken)
  404 not a /submit/<app-id>/<doc-type>/<version>/<document-id> path (runs of slashes count as
      one, trailing slashes as none: see ``merged_parts``; a %2F as sent is no slash)
  405 method other than POST, PUT or OPTIONS
  408 the body took over GLEANPIPE_BODY_TIMEOUT_S to arrive
  413 body over GLEANPIPE_MAX_WIRE_BYTES, or payload over GLEANPIPE_MAX_PAYLOAD_BYTES
  414 path over GLEANPIPE_MAX_URI_BYTES
  431 a kept header (or Content-Encoding) over GLEANPIPE_MAX_HEADER_BYTES
  503 the store failed (raw or error area): the SDK keeps the ping and retries
  204 OPTIONS on a submit path: a browser's CORS preflight (``PREFLIGHT_HEADERS``)

Every answer to a submit path (its first segment is ``submit``) carries
``Access-Control-Allow-Origin: *``, so a web page's Glean.js can read the status and follow the
SDK's rules; without it the browser hides the answer and the SDK sees a network error.

Every 4xx except 404/405/414 writes a record (error type, message, metadata, the first
GLEANPIPE_MAX_ERROR_BYTES of the body) to the store's ``errors/`` area first; if that
write fails the answer is 503, so no ping is dropped without its reason kept.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

from . import rawobject
from .config import Config
from .debug_index import DebugIndex
from .linger import lingering
from .naming import ERROR_PREFIX, PathError, parse_segments
from .nesting import MAX_JSON_DEPTH, deeper_than, too_deep_message
from .read_deadline import WATCHER
from .storage import RawStore, StoreError
from .validation import PingValidator, default_validator

log = logging.getLogger("gleanpipe.submit")

GZIP_MAGIC = b"\x1f\x8b"
METHODS = ("POST", "PUT")
# (metadata name, request header name) of each header kept with a ping
_KEPT = tuple((h, h.replace("_", "-")) for h in rawobject.KEPT_HEADERS)
_SPELLED = {"x_debug_id": "X-Debug-ID"}  # as the Glean SDK sends it, where that is not just title case


# CORS, for Glean.js in a web page or extension (see README, "From a web page (Glean.js)"). Its
# fetch uploader (glean/src/platform/browser/fetch_uploader.ts) posts with Content-Type
# application/json and Content-Encoding gzip and its own X- headers: none of them is
# CORS-safelisted, so the browser first sends a preflight OPTIONS, and then shows the page the
# answer only when it says Access-Control-Allow-Origin. Any origin: submit takes anonymous pings
# from anyone who can reach it (curl needs no CORS), the request carries no credentials
# (credentials: "omit"), and an answer says nothing but what became of that ping.
ALLOW_ORIGIN = ("Access-Control-Allow-Origin", "*")
# the request headers Glean.js sets that a browser sends (Date and Content-Length, which it sets
# too, are forbidden request headers: the browser drops them): what a preflight allows when it
# does not say which headers it wants (see ``allowed_headers``)
CORS_REQUEST_HEADERS = "Content-Type, Content-Encoding, X-Telemetry-Agent, X-Debug-ID, X-Source-Tags"
# a header name (RFC 9110's token)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
PREFLIGHT_MAX_AGE_S = 86400  # how long a browser may reuse a preflight (Chromium caps it at 7200)
PREFLIGHT_HEADERS = {  # and Access-Control-Allow-Headers, from the preflight (``preflight``)
    ALLOW_ORIGIN[0]: ALLOW_ORIGIN[1],
    "Access-Control-Allow-Methods": ", ".join(METHODS),
    "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
}


def is_submit_path(path: str) -> bool:
    """Whether a request is for submit: its first segment is ``submit`` (runs of slashes count as
    one, as in ``merged_parts``). Its answers, whatever their status, are CORS answers; /debug,
    /dictionary and other paths get none."""
    return path.startswith("/submit/") or path.lstrip("/").partition("/")[0] == "submit"


def preflight(requested: str | None = None) -> "Response":
    """The answer to OPTIONS on a submit path: a browser's CORS preflight. Given for any submit path,
    even one the POST will refuse (a bad segment, too long): the POST's own 4xx then reaches the
    SDK, which drops the ping, where a failed preflight is a network error it retries.
    ``requested``: the preflight's Access-Control-Request-Headers (see ``allowed_headers``)."""
    headers = dict(PREFLIGHT_HEADERS)
    headers["Access-Control-Allow-Headers"] = allowed_headers(requested)
    headers["Vary"] = "Access-Control-Request-Headers"  # the answer depends on it (for caches)
    return Response(204, b"", headers)


def allowed_headers(requested: str | None) -> str:
    """The request headers a preflight allows: those it asks for, when they are a list of header
    names, so a header a later Glean.js sends, or a page's own uploader adds, does not fail the
    preflight (which Glean.js sees as a network error, and retries for ever). The request carries
    no credentials and the answer nothing but what became of the ping, so any header may come;
    the edge reads only those it keeps. Without that list, or with one that is not header names,
    the headers Glean.js sends."""
    if requested:
        names = [name.strip() for name in requested.split(",")]
        if all(_HEADER_NAME.fullmatch(name) for name in names):
            return ", ".join(names)
    return CORS_REQUEST_HEADERS


def _header_name(field: str) -> str:
    """A kept header's metadata name (``x_debug_id``) as clients spell the header (``X-Debug-ID``)."""
    return _SPELLED.get(field) or field.replace("_", "-").title()


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Rejected(Exception):
    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


SHOWN_CHARS = 100  # at most this much of the client's own words (a header, a request line) an error message repeats


def shown(value) -> str:
    """A piece of the client's request, as an error message repeats it: quoted, on one line, cut at
    SHOWN_CHARS (serve's answers to what gunicorn cannot parse, http_errors.py; to a refused Host,
    host_check.py)."""
    text = repr(str(value))
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def error_body(error_type: str, message: str) -> bytes:
    """The body of every error answer of the edge (and of serve's answers to what gunicorn cannot
    parse, http_errors.py): ``{"error_type": ..., "error_message": ...}``."""
    return orjson.dumps({"error_type": error_type, "error_message": message})


def _error(status: int, error_type: str, message: str, **headers: str) -> Response:
    return Response(status, error_body(error_type, message), {"Content-Type": "application/json", **headers})


def decompress(body: bytes, limit: int) -> bytes:
    """Gunzip ``body`` (all members), never producing more than ``limit`` bytes. NUL bytes after
    the last member are padding (a tape or block device's, say) and are ignored, as GNU gzip does;
    any other byte after it is a 400."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        chunk = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Rejected(400, "decompress", f"invalid gzip body: {exc}") from None
    if d.eof and len(chunk) <= limit and (not d.unused_data or _zeros(d.unused_data)):
        return chunk  # one gzip member, within the limit: the usual case, no copy
    return _members(memoryview(body), limit)


def _zeros(rest: bytes) -> bool:
    """Whether what follows the last gzip member is only NUL padding."""
    return not rest.strip(b"\0")


GZIP_STEP = 4096  # input fed per call when a body has several members (see _members)


def _members(body: memoryview, limit: int) -> bytes:
    """The general case: every gzip member, in turn. Input goes in GZIP_STEP bytes at a time, so
    what zlib copies out as ``unused_data`` at the end of a member is at most that: fed the whole
    rest each time, 52,000 tiny members in 1 MiB took 0.7 s (each copied the rest of the body)."""
    out, pos, n = bytearray(), 0, len(body)
    while pos < n:
        if pos and body[pos:pos + len(GZIP_MAGIC)] != GZIP_MAGIC:
            if _zeros(body[pos:].tobytes()):
                break  # padding after the last member
            raise Rejected(400, "decompress", "trailing bytes after the gzip stream")
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while not d.eof:
                piece = body[pos:pos + GZIP_STEP]
                if not piece:
                    raise Rejected(400, "decompress", "truncated gzip body")
                out += d.decompress(piece, limit + 1 - len(out))
                while d.unconsumed_tail and len(out) <= limit:  # output was capped: drain this piece
                    out += d.decompress(d.unconsumed_tail, limit + 1 - len(out))
                if len(out) > limit:
                    raise Rejected(413, "payload_too_large",
                                   f"payload is over {limit} bytes after decompression (GLEANPIPE_MAX_PAYLOAD_BYTES)")
                pos += len(piece) - len(d.unused_data)
        except zlib.error as exc:
            raise Rejected(400, "decompress", f"invalid gzip body: {exc}") from None
    return bytes(out)


def _readable(path: str) -> str:
    """The path as a reader would write it: WSGI gives its bytes one character each (latin-1), so
    `/submit/café/...` came as `/submit/cafÃ©/...`. Bytes that are not UTF-8 show as ``\\xff``."""
    try:
        return path.encode("latin-1").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # not a WSGI path (a caller of handle() gave text): as it is
        return path


def escaped_slash(raw_uri: str | None) -> bool:
    """Whether the request target as sent has a ``%2F`` in its path: a slash inside a segment,
    which WSGI's percent-decoded PATH_INFO shows as a slash between two."""
    return raw_uri is not None and "%" in raw_uri and "%2f" in raw_uri.partition("?")[0].lower()


def merged_parts(path: str, raw_uri: str | None = None) -> list[str] | None:
    """For a path that is not ``/submit/<app-id>/<doc-type>/<version>/<document-id>`` as it is:
    its parts (``["", "submit", app, doc_type, version, doc_id]``) with runs of slashes counted as
    one and trailing slashes as none, or None (404). The Glean SDK puts its ``server_endpoint``
    before ``/submit/...``, so an endpoint written with a trailing slash sends ``//submit/...``;
    Mozilla's edge has that merged by nginx (``merge_slashes``), and its decoder (ParseUri, with
    Java's ``split("/")``) drops trailing empty segments.

    ``raw_uri``: the request target as sent (gunicorn's ``RAW_URI``), when ``path`` is WSGI's
    percent-decoded PATH_INFO: a slash that came as ``%2F`` is part of a segment, and a path that
    has one is not merged (``/submit/org%2F/...`` stays a 404, not app ``org``)."""
    if not path.startswith("/") or escaped_slash(raw_uri):
        return None
    parts = ["", *filter(None, path.split("/"))]
    return parts if len(parts) == 6 and parts[1] == "submit" else None


def header_text(value: str) -> str:
    """A header value as the client wrote it. WSGI servers (gunicorn, under `serve` and under
    functions-framework alike, and werkzeug's request.headers over it) give a value's bytes one
    character each (latin-1), so ``café`` sent as UTF-8 came as ``cafÃ©``. Bytes that are UTF-8
    are read as UTF-8; other bytes stay one character each (latin-1, HTTP/1.1's old charset for
    header text): nothing is lost, ``text.encode("latin-1")`` gives the bytes back. Callers
    check ``value.isascii()`` first, the usual case, which needs nothing done."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not UTF-8 (or text that no WSGI server gave): as it is
        return value


SUPPORTED_ENCODINGS = frozenset({"gzip", "x-gzip", "identity"})


def _unsupported_encoding(content_encoding: str | None) -> bool:
    """Whether a Content-Encoding names a coding other than gzip (``identity`` is none)."""
    if not content_encoding:
        return False
    return any(c.strip().lower() not in SUPPORTED_ENCODINGS for c in content_encoding.split(",") if c.strip())


def _says_gzip(content_encoding: str | None) -> bool:
    """Whether a Content-Encoding (of supported codings only) names gzip."""
    return bool(content_encoding) and any(c.strip().lower() in ("gzip", "x-gzip") for c in content_encoding.split(","))


def _meant_as_json(body: bytes) -> bool:
    """Whether a body that is not gzip reads as an attempt at a JSON ping: it starts with ``{`` or
    ``[`` (after JSON's whitespace). Such a body, broken, gets the JSON error whatever the
    Content-Encoding says (a plain JSON body under ``Content-Encoding: gzip`` is taken)."""
    return body.lstrip(b" \t\r\n")[:1] in (b"{", b"[")


def _is_zlib(body: bytes) -> bool:
    """Whether ``body`` starts with a zlib header (RFC 1950: deflate, a window of at most 32 KiB,
    and the check bits), as zlib.compress and many an HTTP "deflate" body do: 78 9c, 78 da, 78 01..."""
    return len(body) >= 2 and body[0] & 0x0F == 8 and body[0] >> 4 <= 7 and (body[0] << 8 | body[1]) % 31 == 0


def _not_gzip(body: bytes) -> str:
    """The 400 for a body under ``Content-Encoding: gzip`` that is neither gzip nor plain JSON,
    naming what it starts with."""
    what = " (a zlib header: zlib/deflate data, not gzip)" if _is_zlib(body) else ""
    return (f"Content-Encoding says gzip, but the body is neither gzip nor plain JSON: it starts with "
            f"{body[:4].hex(' ')}{what}, where gzip starts with 1f 8b")


class SubmitHandler:
    """Framework-free core of submit: (method, path, headers, body) -> Response."""

    # A store in trouble fails every request alike: one log line per this many seconds, with how
    # many more 503s there were (a full disk wrote 37,235 lines in 25 s, maybe onto that disk)
    STORE_ERROR_LOG_S = 10.0

    def __init__(self, config: Config, store: RawStore, validator: PingValidator | None = None,
                 now: Callable[[], datetime] | None = None, debug_index: DebugIndex | None = None):
        self.config = config
        self.store = store
        # what /debug lists; None with GLEANPIPE_DEBUG_INDEX=off
        self.debug = (debug_index or DebugIndex.from_config(config, store)) if config.debug_index else None
        self.validator = validator or default_validator(config.schema_path)
        self.now = now or (lambda: datetime.now(timezone.utc))
        self._said = threading.Lock()
        self._said_at: float | None = None  # when a 503 was last logged
        self._unsaid = 0  # 503s since then, not logged

    def _say_503(self, line: str) -> None:
        with self._said:
            now = time.monotonic()
            if self._said_at is not None and now - self._said_at < self.STORE_ERROR_LOG_S:
                self._unsaid += 1
                return
            unsaid, self._unsaid, self._said_at = self._unsaid, 0, now
        log.warning("%s%s", line, f" (and {unsaid} more 503s since the last such line)" if unsaid else "")

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               declared_length: int | None = None, body_problem: Rejected | None = None,
               raw_uri: str | None = None) -> Response:
        """``declared_length``: the Content-Length, when the adapter did not read an oversized body.
        ``body_problem``: why the body did not arrive whole (``read_body``); ``body`` is what came.
        ``headers``: values as WSGI gives them (latin-1, see ``header_text``). ``raw_uri``: the
        request target as sent, when ``path`` was percent-decoded (see ``merged_parts``)."""
        if not is_submit_path(path):
            return self._answer(method, path, headers, body, declared_length, body_problem, raw_uri)
        if method == "OPTIONS":
            return preflight(headers.get("access-control-request-headers"))
        response = self._answer(method, path, headers, body, declared_length, body_problem, raw_uri)
        response.headers[ALLOW_ORIGIN[0]] = ALLOW_ORIGIN[1]
        return response

    def _answer(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
                declared_length: int | None, body_problem: Rejected | None, raw_uri: str | None) -> Response:
        cfg = self.config
        # ``path`` is WSGI's PATH_INFO (both adapters pass it): its bytes, one character each
        # (decoded as latin-1), so its length is its length in bytes. Encoding it as UTF-8 counted
        # each byte over 0x7F twice.
        if len(path) > cfg.max_uri_bytes:
            return _error(414, "uri_too_long", f"path is over {cfg.max_uri_bytes} bytes (GLEANPIPE_MAX_URI_BYTES)")
        parts = path.split("/")
        if len(parts) != 6 or parts[0] != "" or parts[1] != "submit" or not all(parts[2:]):
            parts = merged_parts(path, raw_uri)  # not the clean path: extra slashes?
        elif escaped_slash(raw_uri):  # `/submit/app%2Fbaseline/1/<id>`: four segments as sent
            parts = None
        if parts is None:
            return _error(404, "not_found", "use /submit/<app-id>/<doc-type>/<version>/<document-id>")
        if method not in METHODS:
            return _error(405, "method_not_allowed", f"use POST or PUT, not {method}", Allow="POST, PUT, OPTIONS")
        received = self.now().astimezone(timezone.utc)
        # the values as sent, for the 431 check: one character per byte, as for ``path`` above
        sent = kept = {h: headers.get(name) for h, name in _KEPT}
        encoding = headers.get("content-encoding")
        for value in sent.values():
            if value is not None and not value.isascii():  # stored as the client wrote it
                kept = {h: v if v is None or v.isascii() else header_text(v) for h, v in sent.items()}
                break
        meta = {
            "submission_timestamp": received.isoformat(timespec="microseconds")[:26] + "Z",
            "uri": _readable(path),
            "headers": kept,
            "content_encoding": encoding if encoding is None or encoding.isascii() else header_text(encoding),
        }
        try:
            payload = self._check(parts, meta, (*sent.items(), ("content_encoding", encoding)), body,
                                  max(len(body), declared_length or 0), body_problem)
            created = self.store.put_new(meta["key"], rawobject.encode(meta, payload))
        except Rejected as rej:
            return self._reject(rej, meta, body)
        except StoreError as exc:  # why goes to the operator's log only: it names folders, buckets, keys
            self._say_503(f"503 for {path}: {exc}")
            return _error(503, "store_unavailable", "could not store the ping, retry later (the server's log says why)",
                          **{"Retry-After": "5"})
        if self.debug is not None and meta["headers"]["x_debug_id"] is not None:
            self.debug.record(meta, "accepted" if created else "duplicate", 200, meta["key"])
        return Response(200, b"", {"X-Gleanpipe-Stored": "new" if created else "duplicate"})

    def _check(self, parts: list[str], meta: dict, sent: tuple[tuple[str, str | None], ...], body: bytes, size: int,
               body_problem: Rejected | None) -> bytes:
        """``sent``: (metadata name, value) of the kept headers and Content-Encoding, as WSGI gave
        them (one character per byte: ``len`` is the length in bytes)."""
        cfg = self.config
        try:
            doc_path = parse_segments(*parts[2:])
        except PathError as exc:
            raise Rejected(400, "uri", str(exc)) from None
        meta.update(app_id=doc_path.app_id, doc_type=doc_path.doc_type, version=doc_path.version,
                    document_id=doc_path.document_id, key=doc_path.key)
        for name, value in sent:
            if value is not None and len(value) > cfg.max_header_bytes:
                raise Rejected(431, "header_too_large", f"{_header_name(name)} header is over {cfg.max_header_bytes} bytes (GLEANPIPE_MAX_HEADER_BYTES)")
        if size > cfg.max_wire_bytes:
            raise Rejected(413, "body_too_large", f"body is over {cfg.max_wire_bytes} bytes (GLEANPIPE_MAX_WIRE_BYTES)")
        if body_problem is not None:
            raise body_problem
        if not body:
            raise Rejected(400, "empty_body", "the request has no body")
        if body.startswith(GZIP_MAGIC):
            payload = decompress(body, cfg.max_payload_bytes)
        elif len(body) > cfg.max_payload_bytes:
            raise Rejected(413, "payload_too_large", f"payload is over {cfg.max_payload_bytes} bytes (GLEANPIPE_MAX_PAYLOAD_BYTES)")
        else:
            payload = body
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if payload is body and _unsupported_encoding(meta["content_encoding"]):  # deflate, br, zstd...
                raise Rejected(400, "content_encoding",
                               f'Content-Encoding "{meta["content_encoding"]}" is not supported: gleanpipe takes '
                               "a gzip body (Content-Encoding: gzip) or plain JSON") from None
            if payload is body and _says_gzip(meta["content_encoding"]) and not _meant_as_json(body):
                raise Rejected(400, "decompress", _not_gzip(body)) from None
            try:  # orjson says "surrogates not allowed" for any byte that is not UTF-8
                payload.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise Rejected(400, "json", f"body is not UTF-8 text: byte {bad.object[bad.start]:#04x} at offset "
                                            f"{bad.start} ({bad.reason})") from None
            if str(exc).startswith("number is infinity"):  # valid JSON, but past any number a metric holds
                raise Rejected(400, "json", "body has a number past the range of a 64-bit float (about 1.8e308), "
                                            f"which no Glean metric can hold, at char {exc.pos}") from None
            if str(exc).startswith("depth limit exceeded"):  # orjson reads 1024 levels: far past our own limit
                raise Rejected(400, "json", f"body nests JSON deeper than {MAX_JSON_DEPTH} levels, the most a ping "
                                            f"may have (MAX_JSON_DEPTH): over 1024 levels at char {exc.pos}") from None
            raise Rejected(400, "json", f"body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise Rejected(400, "schema", f"a ping is a JSON object, not {type(doc).__name__}")
        # before the schema: its error messages (and jsonschema-rs) fail on JSON nested some hundreds
        # of levels deep, and the loader cannot write a row past 254 (nesting.py says why 64)
        if deeper_than(doc, payload):
            raise Rejected(400, "json", too_deep_message(doc))
        errors = self.validator.validate(doc, len(payload))
        if errors:
            raise Rejected(400, "schema", self.validator.render(errors))
        return payload

    def _reject(self, rej: Rejected, meta: dict, body: bytes) -> Response:
        """Keep the reason and the (bounded) original bytes, then answer the 4xx."""
        # none of a body over the wire limit (a chunked one was read up to it: the rest is unknown)
        keep = b"" if rej.error_type == "body_too_large" else body[: self.config.max_error_bytes]
        record = {
            **meta,
            "error_type": rej.error_type,
            "error_message": rej.message,
            "status": rej.status,
            "body_bytes_kept": len(keep),
            "body_truncated": len(keep) < len(body) or rej.error_type == "body_too_large",
            "body_base64": base64.b64encode(keep).decode("ascii"),
        }
        day = meta["submission_timestamp"][:10]
        key = f"{ERROR_PREFIX}{day}/{rej.error_type}/{uuid.uuid4()}.json"
        try:
            self.store.put_new(key, orjson.dumps(record), notify=False)
        except StoreError as exc:
            self._say_503(f"503 for {meta['uri']} (rejected {rej.error_type}, reason not kept): {exc}")
            return _error(503, "store_unavailable",
                          "could not record the rejection, retry later (the server's log says why)",
                          **{"Retry-After": "5"})
        if self.debug is not None and meta["headers"]["x_debug_id"] is not None:
            self.debug.record(meta, "rejected", rej.status, key, rej.error_type, rej.message)
        return _error(rej.status, rej.error_type, rej.message)


# --- adapters -----------------------------------------------------------------------

STATUS_TEXT = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
               408: "Request Timeout", 411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
               431: "Request Header Fields Too Large", 500: "Internal Server Error",
               503: "Service Unavailable"}


_CGI_HEADERS = ("CONTENT_LENGTH", "CONTENT_TYPE")  # the two headers WSGI keeps without HTTP_


def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in _CGI_HEADERS else "HTTP_" + key


_ENVIRON_KEYS = {name: _environ_key(name) for name in [n for _, n in _KEPT] + ["content-encoding"]}


class _EnvironHeaders:
    """Case-insensitive header lookup over a WSGI environ."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict):
        self.environ = environ

    def get(self, name: str, default=None):
        key = _ENVIRON_KEYS.get(name) or _environ_key(name)
        if key in _CGI_HEADERS:
            return self.environ.get(key) or default
        return self.environ.get(key, default)


def read_body(stream, content_length: int | None, limit: int, *, sock=None,
              timeout_s: float | None = None) -> tuple[bytes, Rejected | None]:
    """Read at most limit + 1 bytes (enough to tell 'over the limit'), within ``timeout_s`` of
    wall-clock time when the connection's socket is given (gunicorn puts it in the environ as
    ``gunicorn.socket``; read_deadline.py cuts the read when the time is up).

    Returns the bytes read and, when the body did not arrive whole, why (the handler answers
    it after the path and size checks, and keeps in the error store what was read): 408 after
    the timeout, 400 ``incomplete_body`` when the connection ended before Content-Length bytes
    came, 400 ``body_framing`` when the server could not parse the body (a bad chunk size, say).
    Any of them leaves the connection unusable: the answer closes it (``closes_connection``)."""
    want = limit + 1 if content_length is None else min(content_length, limit + 1)
    chunks, got, problem = [], 0, None
    deadline = WATCHER.watch(sock, timeout_s) if sock is not None and timeout_s else None
    try:
        while got < want:
            chunk = stream.read(want - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except Exception as exc:  # noqa: BLE001 - whatever the server's body reader raises is the client's doing
        # what the failed read had taken in is in the server's buffers, not in ``chunks``
        rest = taken_in(stream, want - got)
        if rest:
            chunks.append(rest)
            got += len(rest)
        # gunicorn's NoMoreData and resets are OSErrors (so is gevent's end of a read that the
        # deadline cut), werkzeug's ClientDisconnected is not
        if isinstance(exc, OSError) or type(exc).__name__ == "ClientDisconnected":
            problem = Rejected(400, "incomplete_body", f"the connection ended after {got} bytes of the body")
        else:
            problem = Rejected(400, "body_framing", f"the body cannot be read: {type(exc).__name__}: {exc}"[:200])
    finally:
        if deadline is not None:
            WATCHER.done(deadline)
    if deadline is not None and deadline.expired:  # what ended the read was the cut at the deadline
        problem = Rejected(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s (GLEANPIPE_BODY_TIMEOUT_S)")
    elif problem is None and content_length is not None and got < want:
        problem = Rejected(400, "incomplete_body",
                           f"the body ended after {got} of its {content_length} bytes (Content-Length)")
    return b"".join(chunks), problem


def taken_in(stream, most: int) -> bytes:
    """After a read of ``stream`` raised: the body bytes gunicorn's reader had taken in and not
    handed over yet (at most ``most``), so that the error record keeps what came and says how
    much. gunicorn's ``Body.read`` gathers a read in its buffer, its ``LengthReader`` in its
    socket reader's buffer, its ``ChunkedReader`` (the chunks' data, without their framing) in
    its own buffer; an exception in the middle (a reset, a bad chunk size, a gevent read the
    deadline cut) leaves them there, and the read returns nothing: a client that reset after
    200 bytes was "after 0 bytes", a 408 under gevent kept none of the body. ``stream`` is
    gunicorn's Body (serve, and the function under functions-framework: gunicorn says
    wsgi.input_terminated, so werkzeug hands over its Body as it is), or werkzeug's LimitedStream
    over a Body (a server that does not say so; one read of it is one read of the Body). Only
    ever called on this error path, so a good ping pays nothing. Another server's stream, or a
    gunicorn whose readers changed: nothing (as before)."""
    try:
        from gunicorn.http.body import Body, ChunkedReader, LengthReader
    except ImportError:
        return b""
    body = getattr(stream, "_stream", stream)  # werkzeug's LimitedStream keeps the stream it wraps there
    if not isinstance(body, Body) or most <= 0:
        return b""
    try:
        pieces = [body.buf.getvalue()]
        reader = body.reader
        if isinstance(reader, LengthReader):
            pieces.append(reader.unreader.buf.getvalue())
        elif isinstance(reader, ChunkedReader):
            pieces.append(reader.buf.getvalue())
    except AttributeError:  # not the readers this was written against
        return b""
    return b"".join(pieces)[:most]


def read_request_body(handler: SubmitHandler, stream, content_length: int | None, sock) -> tuple[bytes, Rejected | None]:
    """``read_body`` as both adapters call it. A body declared over GLEANPIPE_MAX_WIRE_BYTES is
    never read: the 413 comes from its declared size."""
    limit = handler.config.max_wire_bytes
    if content_length is not None and content_length > limit:
        return b"", None
    return read_body(stream, content_length, limit, sock=sock, timeout_s=handler.config.body_timeout_s)


def closes_connection(handler: SubmitHandler, content_length: int | None, body: bytes,
                      problem: Rejected | None) -> bool:
    """Whether the connection cannot carry another request after this one: its body did not
    arrive whole (cut, late or badly framed), or the edge left part of it unread (a body over
    GLEANPIPE_MAX_WIRE_BYTES: gunicorn's gthread worker drains at most 64 KiB of what an app
    left). The answer then says ``Connection: close`` and the server closes the connection,
    lingering first (linger.py): a client may still be sending the body, and a close with data
    unread would reset the connection before the client reads its answer."""
    limit = handler.config.max_wire_bytes
    return problem is not None or len(body) > limit or (content_length is not None and content_length > limit)


def force_close(start_response: Callable) -> None:
    """Make the server close the connection after this answer, and say so. WSGI leaves the
    connection to the server (gunicorn drops a Connection header an app sends, and without
    this answered ``Connection: keep-alive`` before it closed), but gunicorn's start_response
    is a method of its response, whose force_close() does both. Another server: nothing."""
    close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if close is not None:
        close()


def make_wsgi_app(handler: SubmitHandler) -> Callable:
    """A plain WSGI app for `gleanpipe serve` (no framework in the hot path)."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        headers = _EnvironHeaders(environ)
        raw_length = environ.get("CONTENT_LENGTH")
        try:
            length = int(raw_length) if raw_length else None
        except ValueError:
            length = None
        body, problem = read_request_body(handler, environ["wsgi.input"], length, environ.get("gunicorn.socket"))
        response = handler.handle(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), headers, body,
                                  declared_length=length, body_problem=problem, raw_uri=environ.get("RAW_URI"))
        out_headers = list(response.headers.items())
        if response.status != 204:  # a 204 has no Content-Length (RFC 9110, 8.6)
            out_headers.insert(0, ("Content-Length", str(len(response.body))))
        closing = closes_connection(handler, length, body, problem)
        if closing:  # the server says Connection: close (a WSGI app may not send that hop-by-hop header)
            force_close(start_response)
        start_response(f"{response.status} {STATUS_TEXT.get(response.status, '')}", out_headers)
        out = [b""] if environ["REQUEST_METHOD"] == "HEAD" else [response.body]  # HEAD: the headers only
        if closing:  # once the answer is written, read what the client still sends (linger.py)
            return lingering(out, environ, handler.config.linger_s)
        return out

    return app
