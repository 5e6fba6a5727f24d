"""serve's answer to a request gunicorn cannot parse: JSON in the edge's shape, not gunicorn's page.

gunicorn answers some malformed requests itself, before serve's WSGI app (http_edge.py) runs:
a Content-Length that is not a number or comes twice, a Transfer-Encoding it cannot frame, an
invalid request line, method or HTTP version, a header line it cannot parse, a request line or
header line over its limits (serve.http_limits), over 100 headers, an ``Expect`` other than
100-continue. It answered with an HTML page (``gunicorn.util.write_error``), where every answer of
the edge is ``{"error_type": ..., "error_message": ...}``, and with 501 for a transfer coding it
does not know (``Transfer-Encoding: br``): a 5xx, which the Glean SDK retries for ever, for a
request that can never succeed.

``JSONParseErrors`` is a mixin for serve's gunicorn workers (gevent_worker.py, http_worker.py)
whose ``handle_error`` answers those requests with the same status as gunicorn (414, 417, 431,
400), in JSON, with a short ``error_type`` and a one-line ``error_message``, except that an
unknown transfer coding is a 400 ``transfer_encoding``, as every other Transfer-Encoding gunicorn
refuses already was (``gzip`` alone, ``chunked, gzip``): RFC 9112 6.3 makes a request whose
framing cannot be read a 400, and a 4xx is what makes the SDK drop a request it cannot fix.
gunicorn's ``Connection: close`` stays (the connection is closed after the answer: where the next
request starts is unknown), and so does its log line, a WARNING ``Invalid request from ip=...``
without a traceback. The answer carries ``Access-Control-Allow-Origin: *`` as the edge's submit
answers do, so that Glean.js in a browser reads its 4xx (too many headers, say) instead of a
network error, which it retries; the request path is not known here (gunicorn had not parsed
it, or gives no request), and such an answer says nothing but that the request was malformed.

Nothing is written to the error store: there is no parsed request, so no document id to trust.
This runs only once gunicorn has failed to parse a request: the requests it parses take the
paths they took before. Everything else (an error of the app's, a 500; TLS errors, which tls.py
handles) goes to gunicorn's own handle_error, as before.
"""

from __future__ import annotations

from typing import NamedTuple

from gunicorn import util
from gunicorn.http import errors, message

from .http_edge import ALLOW_ORIGIN, error_body, shown as _shown  # gunicorn gives the bytes one character each

BARE_LF = "bare LF as line terminator"  # gunicorn's word for a line that ends in LF, not CRLF
# the headers a request may have once (RFC 9110 5.3): gunicorn refuses a second one
ONCE = getattr(message, "RFC9110_5_3_SINGLETON_FIELDS", frozenset(("HOST", "CONTENT-TYPE")))


class ParseAnswer(NamedTuple):
    status: int
    reason: str
    error_type: str
    message: str


def _header_values(req, name: str) -> list[str]:
    """The values of header ``name`` (upper case) of a request gunicorn gave with its error."""
    return [v for n, v in getattr(req, "headers", None) or () if n == name]


def _transfer_encoding(req, fallback: str) -> ParseAnswer:
    values = _header_values(req, "TRANSFER-ENCODING")
    value = ", ".join(values) if values else fallback
    if getattr(req, "version", (1, 1)) < (1, 1):
        message = (f"Transfer-Encoding {_shown(value)} in an HTTP/1.0 request: HTTP/1.0 has no chunked "
                   "framing, send the body with Content-Length")
    else:
        message = (f"Transfer-Encoding {_shown(value)} is not supported: send the body with Content-Length, "
                   "or with Transfer-Encoding: chunked alone")
    return ParseAnswer(400, "Bad Request", "transfer_encoding", message)


def _content_length(req) -> ParseAnswer:
    values = _header_values(req, "CONTENT-LENGTH")
    if len(values) > 1:
        message = f"more than one Content-Length header ({', '.join(_shown(v) for v in values)})"
    elif values and _header_values(req, "TRANSFER-ENCODING"):
        message = "Content-Length together with Transfer-Encoding: the body's length is ambiguous"
    elif values:
        message = f"Content-Length {_shown(values[0])} is not a number of bytes"
    else:
        message = "the Content-Length header is not valid"
    return ParseAnswer(400, "Bad Request", "content_length", message)


def _bad_header(message: str) -> ParseAnswer:
    return ParseAnswer(400, "Bad Request", "bad_header", message)


def parse_error_answer(exc: BaseException, cfg) -> ParseAnswer | None:
    """The answer to a request gunicorn could not parse (``exc``, one of gunicorn.http.errors),
    with the limits of gunicorn's settings ``cfg``; None for any other error (gunicorn's own
    handle_error answers it: an error of the app's, a TLS error)."""
    if isinstance(exc, (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName, errors.ConfigurationProblem)):
        return None  # the app's or the server's fault: gunicorn's 500
    if not isinstance(exc, errors.ParseException):
        return None
    said = exc.req if isinstance(exc, errors.InvalidRequestLine) else getattr(exc, "hdr", None)
    if isinstance(exc, (errors.InvalidRequestLine, errors.InvalidHeader)) and said == BARE_LF:
        return _bad_header("a line of the request head ends in a bare LF, not CRLF")
    if isinstance(exc, errors.InvalidRequestLine):
        return ParseAnswer(400, "Bad Request", "bad_request_line", f"not a valid HTTP/1.1 request line: {_shown(exc.req)}")
    if isinstance(exc, errors.InvalidRequestMethod):
        return ParseAnswer(400, "Bad Request", "bad_request_line",
                           f"not a valid HTTP method: {_shown(exc.method)}")
    if isinstance(exc, errors.InvalidHTTPVersion):
        version = exc.version
        shown = f"HTTP/{version[0]}.{version[1]}" if isinstance(version, tuple) and len(version) == 2 else _shown(version)
        return ParseAnswer(400, "Bad Request", "http_version",
                           f"HTTP version {shown} is not supported: serve speaks HTTP/1.1 (and HTTP/1.0)")
    if isinstance(exc, errors.InvalidH2CPreface):
        return ParseAnswer(400, "Bad Request", "http_version",
                           "HTTP/2 is not supported: serve speaks HTTP/1.1 (and HTTP/1.0)")
    if isinstance(exc, errors.UnsupportedTransferCoding):
        return _transfer_encoding(None, exc.hdr)
    if isinstance(exc, errors.InvalidHeader):
        name = str(exc.hdr)
        if name == "TRANSFER-ENCODING":
            return _transfer_encoding(exc.req, "")
        if name == "CONTENT-LENGTH":
            return _content_length(exc.req)
        if exc.req is not None and name in ONCE:  # gunicorn gives the request only for those (and the two above)
            return _bad_header(f"more than one {name.title()} header")
        return _bad_header(f"header {_shown(name)} is not valid: a header line is a name, a colon and a "
                           "value without control characters")
    if isinstance(exc, errors.InvalidHeaderName):
        return _bad_header(f"not a valid header name: {_shown(exc.hdr)}")
    if isinstance(exc, errors.ObsoleteFolding):
        return _bad_header(f"header {_shown(str(exc.hdr).title())} goes on over a folded line (obsolete line folding)")
    if isinstance(exc, errors.InvalidSchemeHeaders):
        names = ", ".join(name.title() for name in sorted(getattr(cfg, "secure_scheme_headers", None) or {}))
        return _bad_header(f"the request's scheme headers contradict each other ({names})")
    if isinstance(exc, errors.LimitRequestLine):
        limit = exc.max_size if exc.max_size is not None else cfg.limit_request_line
        return ParseAnswer(414, "URI Too Long", "request_line_too_long",
                           f"the request line is over {limit} bytes (serve's limit, from GLEANPIPE_MAX_URI_BYTES)")
    if isinstance(exc, errors.LimitRequestHeaders):
        said = str(exc)
        if said == "limit request headers fields":
            error_type, message = "too_many_headers", f"the request has over {cfg.limit_request_fields} headers"
        elif said == "limit request headers fields size":
            error_type, message = ("header_line_too_long", f"a header line is over {cfg.limit_request_field_size} "
                                   "bytes (serve's limit, from GLEANPIPE_MAX_HEADER_BYTES)")
        else:  # "max buffer headers": the whole head, before its lines were counted
            error_type, message = "headers_too_large", (
                f"the request's headers are too large in all: at most {cfg.limit_request_fields} lines of "
                f"{cfg.limit_request_field_size} bytes")
        return ParseAnswer(431, "Request Header Fields Too Large", error_type, message)
    if isinstance(exc, errors.ExpectationFailed):
        return ParseAnswer(417, "Expectation Failed", "expectation",
                           f"Expect {_shown(exc.expect)} is not supported: only 100-continue is")
    if isinstance(exc, (errors.InvalidChunkSize, errors.ChunkMissingTerminator, errors.InvalidChunkExtension)):
        return ParseAnswer(400, "Bad Request", "body_framing", f"the body cannot be read: {exc}"[:200])
    if isinstance(exc, errors.ForbiddenProxyRequest):
        return ParseAnswer(403, "Forbidden", "forbidden", "a PROXY protocol header from a peer not allowed to send one")
    return ParseAnswer(400, "Bad Request", "bad_request", str(exc)[:200])  # a PROXY line, a parse error of a later gunicorn


def answer_bytes(answer: ParseAnswer) -> bytes:
    """The whole HTTP answer: gunicorn's status line and ``Connection: close``, the edge's JSON body."""
    body = error_body(answer.error_type, answer.message)
    head = (f"HTTP/1.1 {answer.status} {answer.reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{': '.join(ALLOW_ORIGIN)}\r\n\r\n")
    return head.encode("ascii") + body


class JSONParseErrors:
    """Mixin for a gunicorn worker class (before the gunicorn worker in its bases): the answer to a
    request gunicorn could not parse is ``parse_error_answer``'s, in JSON (see the module)."""

    def handle_error(self, req, client, addr, exc):
        answer = parse_error_answer(exc, self.cfg)
        if answer is None:
            return super().handle_error(req, client, addr, exc)
        # gunicorn's line for it (serve runs no access log, which gunicorn's handle_error also writes to)
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        try:
            util.write_nonblock(client, answer_bytes(answer))
        except Exception:  # noqa: BLE001 - a client gone already: as gunicorn has it
            self.log.debug("Failed to send error message.")
