"""`gleanpipe serve` over HTTPS (GLEANPIPE_TLS_CERT, GLEANPIPE_TLS_KEY): a real serve with a
certificate signed by a CA made in the test, real TLS clients trusting that CA, spool on (gevent
workers) and off (gthread workers)."""

from __future__ import annotations

import contextlib
import datetime
import gzip
import http.client
import json
import os
import signal
import socket
import ssl
import time
import uuid

import pytest

from conftest import (APP, DATASET, SDK_HEADERS, ServeProcess, children, make_ping, read_all, run_cli,
                      submit_path)
from test_sdk_e2e import run_sdk
from tls_certs import make_ca


@pytest.fixture
def certs(tmp_path):
    return make_ca(tmp_path / "certs")


def tls_serve(data_dir, certs, spool: str, **env) -> ServeProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ServeProcess(data_dir, env={"GLEANPIPE_TLS_CERT": str(certs.cert), "GLEANPIPE_TLS_KEY": str(certs.key),
                                         "GLEANPIPE_SPOOL": spool, **env})
    server.url = f"https://127.0.0.1:{server.port}"
    return server.start()


@pytest.fixture(params=["on", "off"], ids=["spool-on", "spool-off"])
def https_serve(request, data_dir, certs):
    server = tls_serve(data_dir, certs, request.param, GLEANPIPE_BODY_TIMEOUT_S="1")
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.read_log()


def client_context(certs) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca))


def post(server, certs, path: str, body: bytes, headers: dict | None = None):
    """(status, headers, body) of one POST over HTTPS, verifying serve's certificate against the test CA."""
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_context(certs), timeout=15)
    try:
        conn.request("POST", path, body=body, headers=SDK_HEADERS if headers is None else headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def tls_connection(server, certs) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    return client_context(certs).wrap_socket(raw, server_hostname="127.0.0.1")


def closed_after(sock) -> float:
    """Seconds until serve closes ``sock`` without a byte of answer."""
    started = time.monotonic()
    sock.settimeout(20)
    try:
        got = sock.recv(100)
    except ConnectionResetError:
        got = b""
    assert got == b""
    return time.monotonic() - started


def connections_held(server) -> int:
    """How many connections serve's gunicorn workers hold open (Linux /proc): their socket
    descriptors but the listening socket's, which the gunicorn arbiter holds too), and waiting in the
    listening socket's queue (its rx_queue in /proc/net/tcp). 0 once every connection made so far has
    been accepted, handled and closed."""
    def sockets(pid: int) -> list[str]:
        out = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed in the meantime
                continue
            if target.startswith("socket:"):
                out.append(target)
        return out

    (arbiter,) = children(server.proc.pid)
    listening = set(sockets(arbiter))
    queued = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state, queues = line.split()[1], line.split()[3], line.split()[4]
        if state == "0A" and int(local.split(":")[1], 16) == server.port:  # LISTEN: rx_queue is its backlog
            queued += int(queues.split(":")[1], 16)
    return queued + sum(target not in listening for worker in children(arbiter) for target in sockets(worker))


def test_a_gzip_ping_over_https_is_stored_loaded_and_queried_while_serving(https_serve, certs, data_dir):
    server = https_serve
    ping = make_ping(client_id="9a1b2c3d-0000-4000-8000-000000000001",
                     metrics={"counter": {"toolbox.launch_count": 7}})
    doc_id = str(uuid.uuid4())
    status, headers, body = post(server, certs, submit_path("metrics", doc_id), gzip.compress(json.dumps(ping).encode()))
    assert (status, headers["X-Gleanpipe-Stored"], body) == (200, "new", b"")
    assert headers["Access-Control-Allow-Origin"] == "*"  # CORS on submit answers, over TLS too
    assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1", 1) == 1
    # `gleanpipe query` reaches the running serve (its admin API stays plain HTTP on loopback)
    out = run_cli("query", "--data-dir", str(data_dir), "--format", "json",
                  f"SELECT document_id, client_info.client_id, metrics.counter.toolbox_launch_count AS n "
                  f"FROM {DATASET}.metrics_v1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"document_id": doc_id, "client_id": "9a1b2c3d-0000-4000-8000-000000000001",
                                       "n": 7}]
    assert json.loads((data_dir / "serve.json").read_text())["submit_url"] == server.url
    assert (f"serving https://127.0.0.1:{server.port}/submit/<app-id>/<doc-type>/1/<document-id>"
            in server.read_log())


def _der(path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def _renew(path, new, scratch) -> None:
    """Put ``new``'s bytes at ``path`` as certbot and editors do: a new file renamed over the old."""
    (scratch / "next").write_bytes(new.read_bytes())
    os.replace(scratch / "next", path)


def test_a_stop_over_https_ends_an_idle_kept_alive_connection_at_once(https_serve, certs):
    """As over plain HTTP (test_serve's test_a_stop_ends_an_idle_kept_alive_connection_at_once), for
    serve's HTTPS workers: a connection idle between two requests is closed as the stop begins, not
    once its keep-alive has run out (5 s, gevent; 2 s more, gthread), and serve exits well before."""
    conn = http.client.HTTPSConnection("127.0.0.1", https_serve.port, context=client_context(certs), timeout=20)
    try:
        conn.request("POST", submit_path(), body=gzip.compress(json.dumps(make_ping()).encode()), headers=SDK_HEADERS)
        answer = conn.getresponse()
        assert (answer.status, answer.getheader("Connection"), answer.read()) == (200, "keep-alive", b"")
        asked = time.monotonic()
        https_serve.proc.send_signal(signal.SIGTERM)
        assert conn.sock.recv(1) == b""  # closed by serve (TLS close_notify or not: the end of the stream)
        closed = time.monotonic() - asked
        assert https_serve.proc.wait(timeout=30) == 0
        stopped = time.monotonic() - asked
    finally:
        conn.close()
    assert closed < 1.0 and stopped < 2.0, (closed, stopped, https_serve.read_log())


def test_a_stop_over_https_ends_at_once_a_connection_whose_handshake_has_not_begun(https_serve):
    """A TCP connection to the HTTPS port with no byte of a ClientHello on it (a port probe, a
    preconnect) when SIGTERM comes is closed at once. Before: serve waited for its handshake
    (gevent, tls.HANDSHAKE_TIMEOUT_S) or its first byte (gthread, 5 s), at least 4 s from here."""
    with socket.create_connection(("127.0.0.1", https_serve.port), timeout=20) as quiet:
        time.sleep(0.2)  # accepted (a worker waits for its first byte)
        asked = time.monotonic()
        https_serve.proc.send_signal(signal.SIGTERM)
        assert quiet.recv(1) == b""
        closed = time.monotonic() - asked
        assert https_serve.proc.wait(timeout=30) == 0
        stopped = time.monotonic() - asked
    assert closed < 1.5 and stopped < 2.5, (closed, stopped, https_serve.read_log())


def test_a_stop_over_https_answers_a_request_whose_head_had_begun(https_serve, certs):
    """SIGTERM while a client's head is half sent over TLS (read by serve already): it is answered
    once whole. Before (gevent): closed unanswered, as an idle connection is."""
    body = gzip.compress(json.dumps(make_ping()).encode())
    head = (f"POST {submit_path()} HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with tls_connection(https_serve, certs) as slow:
        slow.sendall(head[:25])
        time.sleep(0.3)  # read by serve (no way to see inside TLS what it took)
        https_serve.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        slow.sendall(head[25:] + body)
        answer = read_all(slow)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert https_serve.proc.wait(timeout=30) == 0


def test_a_stop_over_https_answers_a_request_whose_handshake_had_begun(https_serve, certs):
    """SIGTERM while a client's ClientHello is half sent (read by serve already): the connection
    has begun, so its handshake goes on once the rest comes, and its request is answered. The
    client is the ssl module's own, over memory buffers, so the test says which bytes go when."""
    body = gzip.compress(json.dumps(make_ping()).encode())
    request = (f"POST {submit_path()} HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(certs).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 100, len(hello)
    with socket.create_connection(("127.0.0.1", https_serve.port), timeout=15) as raw:
        raw.sendall(hello[:50])
        time.sleep(0.3)  # read by serve (the handshake has begun)
        https_serve.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the stop is under way (a stop ends an idle connection in about 0.01 s)
        raw.sendall(hello[50:])
        while True:  # the rest of the handshake
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                got = raw.recv(65536)
                assert got, "serve closed the connection during the handshake"
                incoming.write(got)
        tls.write(request)
        raw.sendall(outgoing.read())
        answer = b""
        while got := raw.recv(65536):
            incoming.write(got)
            with contextlib.suppress(ssl.SSLWantReadError):
                answer += tls.read(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert https_serve.proc.wait(timeout=30) == 0


def test_a_renewed_certificate_is_served_to_the_next_connections_without_a_restart(https_serve, certs, tmp_path):
    """certbot (or mkcert run again) replaces the files: each worker makes its context again at
    most tls.CERT_CHECK_S after they changed, for the connections that come after; no restart."""
    from gleanpipe.tls import CERT_CHECK_S

    server = https_serve
    renewed = make_ca(tmp_path / "renewed")  # another CA: the client below trusts both
    trusting = client_context(certs)
    trusting.load_verify_locations(cafile=str(renewed.ca))

    def served() -> list[bytes]:  # the certificate each of six new connections is given
        got = []
        for _ in range(6):
            with trusting.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=15),
                                      server_hostname="127.0.0.1") as sock:
                got.append(sock.getpeercert(binary_form=True))
        return got

    assert served() == [_der(certs.cert)] * 6
    _renew(certs.key, renewed.key, tmp_path)
    _renew(certs.cert, renewed.cert, tmp_path)
    time.sleep(CERT_CHECK_S + 0.1)  # a worker's next connection after that has looked at the files
    assert served() == [_der(renewed.cert)] * 6
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=trusting, timeout=15)
    try:
        conn.request("POST", submit_path("metrics", str(uuid.uuid4())),
                     body=gzip.compress(json.dumps(make_ping()).encode()), headers=SDK_HEADERS)
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_worker_keeps_its_certificate_while_the_new_files_do_not_fit_and_waits_for_them_at_start(
        certs, tmp_path, monkeypatch, caplog):
    """tls._Certificate, the context behind serve's TLS hook, with gunicorn's factory (the files'
    certificate and key): a certificate renewed before its key makes no context, so the one read
    before is served (a warning, once for that pair) until the key comes; a worker that starts in
    between (gunicorn restarting one) waits up to CERT_WAIT_S for the pair to fit, then fails."""
    import threading
    from types import SimpleNamespace

    from gleanpipe import tls

    conf = SimpleNamespace(certfile=str(certs.cert), keyfile=str(certs.key))

    def factory():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(conf.certfile, conf.keyfile)
        return context

    def served(context: ssl.SSLContext) -> bytes:  # the certificate a handshake with it gives
        server_end, client_end = socket.socketpair()
        with server_end, client_end:
            client = ssl.create_default_context()
            client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
            got = {}
            side = threading.Thread(target=lambda: got.update(
                cert=client.wrap_socket(client_end, server_hostname="x").getpeercert(binary_form=True)))
            side.start()
            context.wrap_socket(server_end, server_side=True)
            side.join(5)
            return got["cert"]

    monkeypatch.setattr(tls, "CERT_CHECK_S", 0.0)  # look at the files at every connection
    original = _der(certs.cert)
    certificate = tls._Certificate(conf, factory)
    first = certificate.current()
    assert certificate.current() is first  # files unchanged: the same context, not made again
    renewed = make_ca(tmp_path / "renewed")
    _renew(certs.cert, renewed.cert, tmp_path)
    with caplog.at_level("WARNING", logger="gleanpipe.tls"):
        assert certificate.current() is first and certificate.current() is first
    assert [r.getMessage()[:63] for r in caplog.records] == [
        "the certificate or key file changed, but they make no TLS conte"]  # once for this pair
    assert served(first) == original
    _renew(certs.key, renewed.key, tmp_path)
    now = certificate.current()
    assert now is not first and now.options & ssl.OP_IGNORE_UNEXPECTED_EOF
    assert served(now) == _der(renewed.cert)
    assert certificate.current() is now  # the new files are the ones read: not made again at each check
    # a file gone for a moment, half-way through a renewal: the context read before, and a warning
    os.replace(certs.key, tmp_path / "key-aside")
    caplog.clear()
    with caplog.at_level("WARNING", logger="gleanpipe.tls"):
        assert certificate.current() is now and certificate.current() is now
    assert [r.getMessage() for r in caplog.records] == [
        "the certificate or key file changed, but they make no TLS context ([Errno 2] No such file or directory): "
        "serving the certificate read before"]
    os.replace(tmp_path / "key-aside", certs.key)  # back as it was: the same files, nothing made again
    assert certificate.current() is now

    later = make_ca(tmp_path / "later")  # a worker starting while only the certificate is new
    _renew(certs.cert, later.cert, tmp_path)
    fit = threading.Timer(0.5, _renew, (certs.key, later.key, tmp_path))
    fit.start()
    started = time.monotonic()
    booted = tls._Certificate(conf, factory)
    assert 0.4 < time.monotonic() - started < 5
    assert served(booted.current()) == _der(later.cert)
    fit.join()
    _renew(certs.cert, renewed.cert, tmp_path)  # and one whose pair never fits: it gives up
    monkeypatch.setattr(tls, "CERT_WAIT_S", 0.3)
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        tls._Certificate(conf, factory)


@pytest.mark.parametrize("body_bytes", [0, 2300, 4 << 20], ids=["head", "ping", "4MiB"])
def test_a_plain_http_request_to_the_https_port_gets_a_503_that_says_so(https_serve, certs, body_bytes):
    """As nginx does, a plain-HTTP request on the HTTPS port is answered in plain HTTP, saying so,
    whole even when the client sends a body (4 MiB) before it reads (a lingering close). A 503, so
    a Glean SDK whose endpoint says http:// keeps its pings for when it is fixed (a 4xx would
    delete them). Before: a reset (spool on) or an empty reply (spool off), and no word why. It
    carries the CORS header every answer on the submit port has (README, The submit contract): a
    page's fetch read a network error without it."""
    server = https_serve
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        plain.request("POST", submit_path(), body=b"x" * body_bytes, headers=SDK_HEADERS)
        resp = plain.getresponse()
        status, body, connection = resp.status, json.loads(resp.read()), resp.getheader("Connection")
        allow_origin = resp.getheader("Access-Control-Allow-Origin")
    finally:
        plain.close()
    assert (status, body["error_type"], connection, allow_origin) == (503, "https_only", "close", "*")
    assert body["error_message"] == "this port speaks HTTPS (GLEANPIPE_TLS_CERT): send to https://, not http://"
    status, headers, _ = post(server, certs, submit_path(), gzip.compress(json.dumps(make_ping()).encode()))
    assert (status, headers["X-Gleanpipe-Stored"]) == (200, "new")
    assert "Invalid request from ip=127.0.0.1: plain HTTP on the HTTPS port, answered 503 https_only" in server.read_log()


def test_the_edges_error_answers_reach_the_client_over_https(https_serve, certs):
    server = https_serve
    status, headers, body = post(server, certs, submit_path(), b"not json", {"Content-Type": "application/json"})
    assert (status, json.loads(body)["error_type"], headers["Access-Control-Allow-Origin"]) == (400, "json", "*")
    # over GLEANPIPE_MAX_WIRE_BYTES: answered unread, the rest of the body read and dropped (linger.py)
    status, headers, body = post(server, certs, submit_path(), b"x" * (8 << 20), {"Content-Type": "application/json"})
    assert (status, headers["Connection"], json.loads(body)) == (413, "close", {
        "error_type": "body_too_large", "error_message": "body is over 1048576 bytes (GLEANPIPE_MAX_WIRE_BYTES)"})
    # a body that stops coming: the 408 after GLEANPIPE_BODY_TIMEOUT_S (1 s here). Before, the cut
    # took the TLS layer with it (gevent) or made OpenSSL end the connection with an alert (gthread):
    # the client got "wrong version number" or "decode error" instead of its 408.
    with tls_connection(server, certs) as sock:
        sock.sendall(f"POST {submit_path()} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"a".encode())
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"\r\nConnection: close\r\n" in head
    assert json.loads(body) == {"error_type": "body_timeout",
                                "error_message": "the body did not arrive within 1 s (GLEANPIPE_BODY_TIMEOUT_S)"}
    # and an Expect: 100-continue client gets its 100, then its 200
    with tls_connection(server, certs) as sock:
        ping = gzip.compress(json.dumps(make_ping()).encode())
        sock.sendall(f"POST {submit_path()} HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nExpect: 100-continue\r\n"
                     f"Content-Length: {len(ping)}\r\nConnection: close\r\n\r\n".encode())
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(ping)
        assert read_all(sock).startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_request_gunicorn_cannot_parse_gets_the_edges_json_error_over_https(https_serve, certs):
    """http_errors.py behind serve's TLS workers too (tests/test_edge_parse_errors.py: plain HTTP)."""
    for head, status, error in [
        ("Transfer-Encoding: br\r\n", 400, {"error_type": "transfer_encoding", "error_message": (
            "Transfer-Encoding 'br' is not supported: send the body with Content-Length, "
            "or with Transfer-Encoding: chunked alone")}),  # gunicorn: 501, an HTML page
        ("".join(f"X-H{i}: v\r\n" for i in range(101)), 431, {
            "error_type": "too_many_headers", "error_message": "the request has over 100 headers"}),
    ]:
        with tls_connection(https_serve, certs) as sock:
            sock.sendall(f"POST {submit_path()} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
            top, _, body = read_all(sock).partition(b"\r\n\r\n")
        assert top.split(b"\r\n")[0].split(b" ", 2)[1] == str(status).encode()
        assert b"\r\nConnection: close\r\n" in top and b"\r\nContent-Type: application/json\r\n" in top
        assert json.loads(body) == error


def test_a_client_that_stalls_in_its_tls_handshake_or_head_is_cut_off(https_serve, certs):
    """A connection whose TLS handshake or request head stops coming is closed within 5 s, as a
    stalled head is over plain HTTP. Before: a stalled handshake held a gevent worker's greenlet
    (spool on) for ever, and with the spool off the head's clock shut a socket gunicorn had taken
    the descriptor from (when it wrapped it in TLS), so a stalled handshake or head held a thread
    for ever. Neither that cut nor a client that connects and leaves before its handshake (a port
    probe, a browser's unused preconnect) is a warning in serve's log: with the spool off each was
    "Invalid request from ip=...: TLS/SSL connection has been closed (EOF)"."""
    server = https_serve
    socket.create_connection(("127.0.0.1", server.port), timeout=15).close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as raw:
        raw.sendall(b"\x16\x03\x01\x00\xc8\x01")  # the first bytes of a ClientHello, and no more
        assert 4 < closed_after(raw) < 8
    assert "WARNING" not in server.read_log()
    with tls_connection(server, certs) as sock:
        sock.sendall(b"POST /submit/")  # a head that stops half-way, after the handshake
        assert 4 < closed_after(sock) < 8
    status, _, _ = post(server, certs, submit_path(), gzip.compress(json.dumps(make_ping()).encode()))
    assert status == 200


def test_a_client_that_refuses_the_certificate_is_a_warning_that_says_why(https_serve, certs):
    """A client that does not trust serve's certificate (a browser or an SDK without the CA, as
    mkcert's CA not installed) ends the handshake with an alert: the one failure of a handshake
    that is news to the operator, a WARNING "Invalid request" naming the alert, with the spool on
    (gevent_worker.py) as gunicorn's gthread worker writes it with the spool off. serve goes on."""
    server = https_serve
    untrusting = ssl.create_default_context()  # the system's CAs: not the test CA
    untrusting.load_verify_locations(cafile=str(make_ca(certs.ca.parent.parent / "other").ca))
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
            untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
    said = "Invalid request from ip=127.0.0.1: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"
    deadline = time.monotonic() + 20
    while said not in (log := server.read_log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in log.splitlines() if said in line]
    assert len(lines) == 1 and "[WARNING]" in lines[0], log
    assert "Traceback" not in log
    status, _, _ = post(server, certs, submit_path(), gzip.compress(json.dumps(make_ping()).encode()))
    assert status == 200


def test_a_client_that_resets_before_its_handshake_is_no_traceback_and_no_warning(https_serve, certs):
    """A client that resets its connection (RST) at once, or after the first bytes of its
    ClientHello, before the worker has begun the handshake: the ssl module's check, as the socket
    is wrapped, that it is still connected fails ("Closed before TLS handshake with data in recv
    buffer", or a reset). Before: a traceback in serve's output for each (spool on: gevent's
    server wraps the socket before the worker's handle() sees it) or a WARNING "Invalid request"
    (spool off). A port scanner, or a load balancer's health check that resets, is no news."""
    import struct

    server = https_serve
    for first in [b"", b"\x16\x03\x01\x00\xc8\x01"] * 10:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        if first:
            sock.sendall(first)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        sock.close()
    deadline = time.monotonic() + 20
    while (held := connections_held(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held == 0  # each accepted, handled and closed (before: some stayed open until a garbage collection)
    status, _, _ = post(server, certs, submit_path(), gzip.compress(json.dumps(make_ping()).encode()))
    assert status == 200
    log = server.read_log()
    assert ("Traceback" not in log, "WARNING" not in log, "Closed before TLS handshake" not in log) == (True, True, True), log


def test_the_glean_sdk_delivers_over_https_trusting_the_ca_of_ssl_cert_file(data_dir, certs, tmp_path, monkeypatch):
    """The Python SDK uploads with http.client and Python's default TLS context, which takes the
    CA file that SSL_CERT_FILE names (as mkcert's CA would be, or the system's)."""
    server = tls_serve(data_dir, certs, "on")
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
        sent = run_sdk(server.url, tmp_path / "glean", "one", "--require-delivery")
        uploads = {u["doc_type"]: u for u in sent["uploads"]}
        assert {d: u["status"] for d, u in uploads.items()} == {"health": 200, "toolbox-usage": 200}
        assert uploads["toolbox-usage"]["url"].startswith(f"https://127.0.0.1:{server.port}/submit/{APP}/")
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.toolbox_usage_v1", 1) == 1
        assert server.query(f"SELECT document_id, client_info.client_id, metrics.counter.toolbox_launch_count "
                            f"FROM {DATASET}.toolbox_usage_v1")[1] == [
            (uploads["toolbox-usage"]["doc_id"], sent["client_id"], 1)]
    finally:
        assert server.stop() == 0


# --- settings: both files or neither, each readable and what it says it is --------------------------


def test_settings_name_the_variable_for_each_bad_certificate_or_key(tmp_path, certs):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    not_pem = tmp_path / "cert.der"
    not_pem.write_bytes(b"\x30\x82\x01\x00")
    cert, key, missing = str(certs.cert), str(certs.key), str(tmp_path / "nope.pem")
    fifo = tmp_path / "fifo.pem"
    cases = [
        ({"GLEANPIPE_TLS_CERT": cert}, "GLEANPIPE_TLS_CERT (--tls-cert) is set but GLEANPIPE_TLS_KEY (--tls-key) is not: HTTPS needs both "
                                       "the certificate and its key (PEM files), plain HTTP neither"),
        ({"GLEANPIPE_TLS_KEY": key}, "GLEANPIPE_TLS_KEY (--tls-key) is set but GLEANPIPE_TLS_CERT (--tls-cert) is not"),
        ({"GLEANPIPE_TLS_CERT": missing, "GLEANPIPE_TLS_KEY": key},
         f"GLEANPIPE_TLS_CERT (--tls-cert): cannot read {missing}: No such file or directory"),
        ({"GLEANPIPE_TLS_CERT": cert, "GLEANPIPE_TLS_KEY": str(tmp_path)},
         f"GLEANPIPE_TLS_KEY (--tls-key): cannot read {tmp_path}: Is a directory"),
        ({"GLEANPIPE_TLS_CERT": str(not_pem), "GLEANPIPE_TLS_KEY": key},
         f"GLEANPIPE_TLS_CERT (--tls-cert): {not_pem} is not a PEM file (no '-----BEGIN' line)"),
        ({"GLEANPIPE_TLS_CERT": str(garbage), "GLEANPIPE_TLS_KEY": key},
         f"GLEANPIPE_TLS_CERT (--tls-cert): {garbage} holds no PEM certificate OpenSSL can read"),
        ({"GLEANPIPE_TLS_CERT": cert, "GLEANPIPE_TLS_KEY": str(garbage)},
         f"GLEANPIPE_TLS_KEY (--tls-key): {garbage}: OpenSSL cannot read it as a PEM private key"),
        ({"GLEANPIPE_TLS_CERT": key, "GLEANPIPE_TLS_KEY": key},  # the two files swapped, or the key given twice
         f"GLEANPIPE_TLS_CERT (--tls-cert): {key} holds no PEM certificate OpenSSL can read"),
        ({"GLEANPIPE_TLS_CERT": cert, "GLEANPIPE_TLS_KEY": str(other_key)},
         f"GLEANPIPE_TLS_KEY (--tls-key): {other_key}: it is not the key of the certificate in GLEANPIPE_TLS_CERT (--tls-cert)"),
        ({"GLEANPIPE_TLS_CERT": cert, "GLEANPIPE_TLS_KEY": str(encrypted)},
         f"GLEANPIPE_TLS_KEY (--tls-key): {encrypted} is encrypted (it asks for a password): give the key unencrypted"),
        # a FIFO: serve's open() waited for a writer, for ever (found by fuzzing the settings)
        ({"GLEANPIPE_TLS_CERT": str(fifo), "GLEANPIPE_TLS_KEY": key},
         f"GLEANPIPE_TLS_CERT (--tls-cert): {fifo} is not a regular file"),
        ({"GLEANPIPE_TLS_CERT": cert, "GLEANPIPE_TLS_KEY": "/dev/zero"},
         "GLEANPIPE_TLS_KEY (--tls-key): /dev/zero is not a regular file"),
    ]
    os.mkfifo(fifo)
    for env, message in cases:
        out = run_cli("serve", "--data-dir", str(tmp_path / "data"), env=env, timeout=30)
        assert (out.returncode, out.stdout) == (2, ""), (env, out.stderr)
        assert f"Error: {message}" in out.stderr, (env, out.stderr)
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "data" / "warehouse.duckdb").exists()  # refused before anything was opened
    # the flags read the same variables, and a flag given wins over its variable
    out = run_cli("serve", "--data-dir", str(tmp_path / "data"), "--tls-key", key,
                  env={"GLEANPIPE_TLS_CERT": cert, "GLEANPIPE_TLS_KEY": missing, "GLEANPIPE_STORE_URL": "gs://pings/raw"},
                  timeout=30)
    assert "GLEANPIPE_TLS" not in out.stderr and out.returncode == 2  # past the TLS check, refused for the store
    assert "Error: GLEANPIPE_STORE_URL (--store-url): serve loads in-process from a file:// store only" in out.stderr
    out = run_cli("serve", "--data-dir", str(tmp_path / "data"), "--tls-cert", cert,
                  env={"GLEANPIPE_TLS_CERT": missing, "GLEANPIPE_TLS_KEY": key, "GLEANPIPE_STORE_URL": "gs://pings/raw"},
                  timeout=30)
    assert "GLEANPIPE_TLS" not in out.stderr and "file:// store only" in out.stderr and out.returncode == 2


def test_an_expired_or_not_yet_valid_certificate_is_a_warning_and_serve_runs(tmp_path, data_dir):
    """Clients refuse a certificate out of its dates (its check_tls passes): serve says so as it
    starts, and still serves (a test of how clients take it is a use)."""
    from gleanpipe.config import tls_cert_warning

    day = datetime.timedelta(days=1)
    expired = make_ca(tmp_path / "expired", valid=(-2 * day, -day))
    server = tls_serve(data_dir, expired, "on")
    try:
        log = server.read_log()
        assert (f"warning: GLEANPIPE_TLS_CERT (--tls-cert): the certificate in {expired.cert} has expired: browsers, curl and "
                "the Glean SDKs refuse it (make a new one)\n") in log
        assert f"serving https://127.0.0.1:{server.port}/submit/" in log
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            tls_connection(server, expired)
    finally:
        assert server.stop() == 0
    early = make_ca(tmp_path / "early", valid=(day, 2 * day))
    assert tls_cert_warning(str(early.cert), str(early.key)) == (
        f"GLEANPIPE_TLS_CERT (--tls-cert): the certificate in {early.cert} is not valid yet (is this machine's clock right?): "
        "browsers, curl and the Glean SDKs refuse it")
    good = make_ca(tmp_path / "good")
    assert tls_cert_warning(str(good.cert), str(good.key)) is None


def test_serves_tls_context_is_made_once_per_worker_and_leaves_the_handshake_to_the_worker(monkeypatch, certs):
    """tls.ssl_context, gunicorn's hook: gunicorn's context made once (gthread asks for every
    connection), taking an end of stream without close_notify as an end, and sockets that do not
    do their handshake when wrapped (gevent's server wraps in the connection's greenlet, untimed)."""
    from gleanpipe import tls

    monkeypatch.setattr(tls, "_CONTEXT", None)
    made = []

    def default_factory():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certs.cert), str(certs.key))
        made.append(context)
        return context

    hook = tls.ssl_context(None, default_factory)
    assert tls.ssl_context(None, default_factory) is hook and len(made) == 1
    assert made[0].options & ssl.OP_IGNORE_UNEXPECTED_EOF
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        server_end.settimeout(1)  # a handshake on wrapping would wait for a ClientHello that never comes
        wrapped = hook.wrap_socket(server_end, server_side=True)
        assert wrapped.version() is None  # no handshake yet
        wrapped.close()


def test_gunicorn_gets_the_files_and_serves_tls_handshakes_in_serves_workers(tmp_path, certs):
    from gleanpipe.config import Config
    from gleanpipe.serve import gunicorn_args

    cfg = Config.from_env(environ={"GLEANPIPE_TLS_CERT": str(certs.cert), "GLEANPIPE_TLS_KEY": str(certs.key)})
    on, off = gunicorn_args(cfg, spool=True), gunicorn_args(cfg, spool=False)
    assert on[1:3] == ["--worker-class", "gleanpipe.gevent_worker.TLSGeventWorker"]
    assert off[1:3] == ["--worker-class", "gleanpipe.http_worker.HeadTimeoutThreadWorker"]
    for args in (on, off):
        assert args[-4:] == ["--certfile", str(certs.cert), "--keyfile", str(certs.key)]
    plain = Config.from_env(environ={})
    assert "--certfile" not in gunicorn_args(plain, spool=True) and not plain.tls
    # gevent's worker with the JSON answers of http_errors.py, without serve's TLS handshakes
    assert gunicorn_args(plain, spool=True)[1:3] == ["--worker-class", "gleanpipe.gevent_worker.JSONGeventWorker"]
