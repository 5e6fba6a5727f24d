"""Requests gunicorn cannot parse, on raw sockets against a real `gleanpipe serve`, with the spool
on (gevent workers) and off (gthread workers): gunicorn answers them before the edge runs, and
serve's workers make that answer JSON in the edge's shape (http_errors.py), with gunicorn's
status (but a 400, not a 501, for a transfer coding it does not know), Connection: close, one
WARNING line in serve's log and no error record. (Under functions-framework, the submit
function's gunicorn still answers them with its HTML page: README, The submit contract.)"""

from __future__ import annotations

import socket

import pytest

from conftest import gz, make_ping, submit_path
from test_http_framing import closed_after, edge_server, read_response

PATH = submit_path()
HOST = "Host: 127.0.0.1\r\n"
SENDS = "send the body with Content-Length, or with Transfer-Encoding: chunked alone"

# (what the client sends, status, error_type, error_message)
CASES = {
    "content-length not a number": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Content-Length: abc\r\n\r\n",
        400, "content_length", "Content-Length 'abc' is not a number of bytes"),
    "content-length negative": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Content-Length: -1\r\n\r\n",
        400, "content_length", "Content-Length '-1' is not a number of bytes"),
    "content-length twice": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}",
        400, "content_length", "more than one Content-Length header ('2', '3')"),
    "content-length and chunked": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
        400, "content_length", "Content-Length together with Transfer-Encoding: the body's length is ambiguous"),
    # gunicorn: 501 "Unsupported transfer coding"
    "transfer-encoding unknown": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Transfer-Encoding: br\r\n\r\n",
        400, "transfer_encoding", f"Transfer-Encoding 'br' is not supported: {SENDS}"),
    "transfer-encoding unknown then chunked": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Transfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n",
        400, "transfer_encoding", f"Transfer-Encoding 'foo, chunked' is not supported: {SENDS}"),
    "transfer-encoding unknown, not a submit path": (
        f"POST /debug HTTP/1.1\r\n{HOST}Transfer-Encoding: zstd\r\n\r\n",
        400, "transfer_encoding", f"Transfer-Encoding 'zstd' is not supported: {SENDS}"),
    # gunicorn: 400 "Invalid HTTP Header: 'TRANSFER-ENCODING'"
    "transfer-encoding gzip alone": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Transfer-Encoding: gzip\r\n\r\n",
        400, "transfer_encoding", f"Transfer-Encoding 'gzip' is not supported: {SENDS}"),
    "transfer-encoding chunked, gzip": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked, gzip\r\n\r\n",
        400, "transfer_encoding", f"Transfer-Encoding 'chunked, gzip' is not supported: {SENDS}"),
    "transfer-encoding chunked on HTTP/1.0": (
        f"POST {PATH} HTTP/1.0\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400, "transfer_encoding", "Transfer-Encoding 'chunked' in an HTTP/1.0 request: HTTP/1.0 has no chunked "
                                  "framing, send the body with Content-Length"),
    "http version 2.0": (
        f"POST {PATH} HTTP/2.0\r\n{HOST}\r\n",
        400, "http_version", "HTTP version HTTP/2.0 is not supported: serve speaks HTTP/1.1 (and HTTP/1.0)"),
    "http version not a number": (
        f"POST {PATH} HTTP/1.x\r\n{HOST}\r\n",
        400, "http_version", "HTTP version 'HTTP/1.x' is not supported: serve speaks HTTP/1.1 (and HTTP/1.0)"),
    "request line garbage": (
        "GARBAGE\r\n\r\n", 400, "bad_request_line", "not a valid HTTP/1.1 request line: 'GARBAGE'"),
    "http/2 preface": (
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad_request_line", "not a valid HTTP/1.1 request line: 'PRI * HTTP/2.0'"),
    "method lower case": (
        f"post {PATH} HTTP/1.1\r\n{HOST}\r\n", 400, "bad_request_line", "not a valid HTTP method: 'post'"),
    "header without a colon": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Foo\r\n\r\n",
        400, "bad_header", "header 'Foo' is not valid: a header line is a name, a colon and a value without control characters"),
    "header name with a space before the colon": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Foo : bar\r\n\r\n", 400, "bad_header", "not a valid header name: 'Foo '"),
    "folded header": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Foo: bar\r\n baz\r\n\r\n",
        400, "bad_header", "header 'Foo' goes on over a folded line (obsolete line folding)"),
    "host twice": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}{HOST}\r\n", 400, "bad_header", "more than one Host header"),
    "bare LF": (
        f"POST {PATH} HTTP/1.1\n{HOST}\n", 400, "bad_header", "a line of the request head ends in a bare LF, not CRLF"),
    "expect other than 100-continue": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}Expect: foo\r\nContent-Length: 0\r\n\r\n",
        417, "expectation", "Expect 'foo' is not supported: only 100-continue is"),
    "request line too long": (  # gunicorn's 4094 with the default GLEANPIPE_MAX_URI_BYTES
        f"POST /submit/{'a' * 5000} HTTP/1.1\r\n{HOST}\r\n",
        414, "request_line_too_long", "the request line is over 4094 bytes (serve's limit, from GLEANPIPE_MAX_URI_BYTES)"),
    "header line too long": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}X-Source-Tags: {'t' * 9000}\r\n\r\n",
        431, "header_line_too_long", "a header line is over 8190 bytes (serve's limit, from GLEANPIPE_MAX_HEADER_BYTES)"),
    "too many headers": (
        f"POST {PATH} HTTP/1.1\r\n{HOST}" + "".join(f"X-H{i}: v\r\n" for i in range(101)) + "\r\n",
        431, "too_many_headers", "the request has over 100 headers"),
}


@pytest.fixture(scope="module", params=["serve", "serve-threads"])
def edge(request, tmp_path_factory):
    """serve with the spool on (gevent workers) and off (gthread workers), each started once."""
    data_dir = tmp_path_factory.mktemp(f"parse-{request.param}") / "data"
    data_dir.mkdir()
    srv = edge_server(request.param, data_dir, {})
    yield srv
    srv.stop()
    assert "Traceback" not in srv.read_log()


def exchange(port: int, raw: str) -> tuple[int, dict, dict | None, bool]:
    """(status, headers, JSON body, whether serve closed the connection after it) of ``raw``."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw.encode("latin-1"))
        headers: dict = {}
        status, body, after = read_response(sock, headers=headers)
        assert after == b""
        return status, headers, body, closed_after(sock, timeout=5)


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_gunicorn_cannot_parse_gets_the_edges_json_error(edge, case):
    raw, status, error_type, message = CASES[case]
    before = len(edge.read_log())
    got, headers, body, closed = exchange(edge.port, raw)
    assert (got, body) == (status, {"error_type": error_type, "error_message": message})
    assert (headers["content-type"], headers["connection"], headers["access-control-allow-origin"], closed) == (
        "application/json", "close", "*", True)
    # gunicorn's own log line for it, once, without a traceback
    said = edge.read_log()[before:]
    assert said.count("[WARNING] Invalid request from ip=127.0.0.1: ") == 1 and "Traceback" not in said, said


def test_no_error_record_is_written_and_pings_are_taken_as_before(edge):
    for raw, *_ in CASES.values():
        exchange(edge.port, raw)
    errors = edge.data_dir / "store" / "errors"
    assert not errors.exists() or not list(errors.rglob("*.json"))  # no parsed request: no document id to trust
    ping = gz(make_ping())
    with socket.create_connection(("127.0.0.1", edge.port), timeout=20) as sock:
        sock.sendall(f"POST {submit_path()} HTTP/1.1\r\n{HOST}Content-Encoding: gzip\r\n"
                     f"Content-Length: {len(ping)}\r\n\r\n".encode() + ping)
        headers: dict = {}
        assert read_response(sock, headers=headers)[:2] == (200, None)
        assert (headers["x-gleanpipe-stored"], headers["connection"]) == ("new", "keep-alive")


def test_only_requests_gunicorn_could_not_parse_get_the_json_answer():
    """Everything else goes to gunicorn's own handle_error, as before: an error of the app's
    (gunicorn's 500, with its traceback), a header the app tried to send, a TLS error."""
    import ssl

    from gunicorn.config import Config
    from gunicorn.http import errors

    from gleanpipe.http_errors import answer_bytes, parse_error_answer

    cfg = Config()
    for exc in (RuntimeError("a bug"), errors.InvalidResponseHeader("X-A"), errors.InvalidResponseHeaderName("X A"),
                errors.ConfigurationProblem("SCRIPT_NAME"), ssl.SSLError(1, "bad"), errors.NoMoreData(b"")):
        assert parse_error_answer(exc, cfg) is None, exc
    # headers over gunicorn's buffer before their lines are counted (a client that sends them gets a reset
    # once the answer is written, as from gunicorn's own: not tested through a socket)
    assert parse_error_answer(errors.LimitRequestHeaders("max buffer headers"), cfg) == (
        431, "Request Header Fields Too Large", "headers_too_large",
        "the request's headers are too large in all: at most 100 lines of 8190 bytes")
    # a piece of the request is repeated on one line, cut at SHOWN_CHARS
    answer = parse_error_answer(errors.InvalidRequestLine("GET /" + "x" * 300 + "\n"), cfg)
    assert answer.message == "not a valid HTTP/1.1 request line: " + repr("GET /" + "x" * 300 + "\n")[:100] + "..."
    assert answer_bytes(answer).startswith(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n")
