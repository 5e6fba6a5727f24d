"""DNS rebinding: serve on loopback answers its pages (/debug, /dictionary, any path but submit's)
only to a loopback Host (host_check.py). All on a real serve, with real sockets: http.client
with the Host header a browser sends after a rebinding (the page's own name, evil.example)."""

from __future__ import annotations

import http.client
import socket
import time
import uuid

import orjson
import pytest

from conftest import SDK_HEADERS, ServeProcess, gz, host_refusal, make_ping, run_cli, submit_path, taken_port
from gleanpipe.config import Config, SettingError
from gleanpipe.host_check import allowed_host, host_name, listens_on_loopback

TAG = "rebind-tag"
ALLOWED = "gleanpipe.test,.example.test"


def request(server, method: str, path: str, host: str | None, body: bytes = b"", headers: dict | None = None):
    """(status, body, headers) of one request to ``server`` on 127.0.0.1 with the Host ``host``
    (None: no Host header at all)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body or method in ("POST", "PUT"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def send_debug_ping(server, host: str) -> str:
    """A debug-tagged ping sent with Host ``host``; returns its document id once it is listed."""
    doc_id = str(uuid.uuid4())
    status, body, _ = request(server, "POST", submit_path("metrics", doc_id), host, gz(make_ping()),
                              {**SDK_HEADERS, "X-Debug-ID": TAG})
    assert (status, body) == (200, b""), body
    return doc_id


def listed(server, doc_id: str, timeout: float = 10) -> dict:
    """The debug viewer's entry of ``doc_id``, read with Host localhost, once its object is written."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = request(server, "GET", f"/debug/api/tags/{TAG}", f"localhost:{server.port}")
        assert status == 200, body
        found = [p for p in orjson.loads(body)["pings"] if p["document_id"] == doc_id and not p.get("pending")]
        if found or time.monotonic() > deadline:
            assert found, body
            return found[0]
        time.sleep(0.05)


@pytest.fixture(scope="module", params=["spool", "no-spool"])
def loopback_serve(request, tmp_path_factory):
    """serve on 127.0.0.1 (the default), with the spool (gevent workers, wsgi:spool_app) and without
    (gthread workers, wsgi:app), and two names of GLEANPIPE_ALLOWED_HOSTS."""
    data_dir = tmp_path_factory.mktemp("rebind") / "data"
    data_dir.mkdir(parents=True)
    env = {"GLEANPIPE_ALLOWED_HOSTS": ALLOWED, "GLEANPIPE_SPOOL": "on" if request.param == "spool" else "off"}
    server = ServeProcess(data_dir, env=env).start()
    yield server
    server.stop()


def pages(server) -> list[str]:
    """Every kind of path but submit's: the viewer's pages, JSON API and static files, the dictionary's
    pages and JSON, and paths no app has (the submit app's 404)."""
    doc_id = send_debug_ping(server, f"127.0.0.1:{server.port}")
    entry = listed(server, doc_id)
    return ["/debug", "/debug/", f"/debug/{TAG}", "/debug/api/tags", f"/debug/api/tags/{TAG}",
            f"/debug/api/tags/{TAG}/{entry['id']}", "/debug/static/viewer.js", "/dictionary/",
            "/dictionary/index.html", "/dictionary/api/apps.json", "/", "/favicon.ico", "//debug/api/tags"]


def test_pages_refuse_a_host_that_is_not_loopback(loopback_serve):
    for path in pages(loopback_serve):
        for host in (f"evil.example:{loopback_serve.port}", "evil.example", "127.0.0.1.evil.example",
                     "localhost.evil.example", f"192.168.1.20:{loopback_serve.port}", "[::2]", "localhost:x"):
            status, body, headers = request(loopback_serve, "GET", path, host)
            assert (status, orjson.loads(body)) == (403, host_refusal(host)), (path, host, body)
            assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
            assert "access-control-allow-origin" not in headers  # not a submit answer
    for method in ("HEAD", "POST", "OPTIONS", "DELETE"):  # whatever the method
        status, body, _ = request(loopback_serve, method, "/debug/api/tags", "evil.example")
        assert (status, body if method == "HEAD" else orjson.loads(body)) == (
            403, b"" if method == "HEAD" else host_refusal("evil.example")), (method, body)


def test_pages_answer_a_loopback_host_or_an_allowed_name(loopback_serve):
    port = loopback_serve.port
    for path in pages(loopback_serve):
        expected = 404 if path in ("/", "/favicon.ico", "//debug/api/tags") else 200
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", "app.localhost",
                     "127.0.0.2", "[::1]", "localhost.", f"gleanpipe.test:{port}", "example.test", "a.b.example.test"):
            status, body, _ = request(loopback_serve, "GET", path, host)
            assert status == expected, (path, host, body)
            if expected == 404:
                assert orjson.loads(body)["error_type"] != "host_not_allowed"
    status, body, _ = request(loopback_serve, "GET", "/debug/api/tags", "notexample.test")  # not under .example.test
    assert (status, orjson.loads(body)) == (403, host_refusal("notexample.test"))


def test_submit_takes_a_ping_whatever_its_host(loopback_serve):
    """The SDK's endpoint may be any name that leads to loopback: submit and its CORS preflight stay open
    to any Host; what the ping holds is not given back to that Host."""
    doc_id = send_debug_ping(loopback_serve, f"evil.example:{loopback_serve.port}")
    entry = listed(loopback_serve, doc_id)
    assert (entry["status"], entry["http_status"]) == ("accepted", 200)
    status, body, _ = request(loopback_serve, "GET", f"/debug/api/tags/{TAG}/{entry['id']}", "evil.example")
    assert (status, orjson.loads(body)) == (403, host_refusal("evil.example"))  # taken, but not read back so
    key = f"raw/org-example-toolbox/metrics/1/{doc_id}"
    assert entry["object_key"].startswith(key)
    assert loopback_serve.wait_rows(f"SELECT count(*) FROM org_example_toolbox.metrics WHERE document_id = '{doc_id}'",
                                    1) == 1
    status, body, headers = request(loopback_serve, "OPTIONS", "//submit/a/b/1/c", "evil.example", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert (status, body, headers["access-control-allow-origin"]) == (204, b"", "*")
    status, body, _ = request(loopback_serve, "GET", submit_path(), "evil.example")  # submit's own answer
    assert status == 405 and orjson.loads(body)["error_type"] != "host_not_allowed"


def raw_request(server, head: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def test_a_request_without_host_http_1_0_is_let_through_http_1_1_is_not(loopback_serve):
    status, body = raw_request(loopback_serve, b"GET /debug/api/tags HTTP/1.0\r\n\r\n")
    assert status == 200 and "tags" in orjson.loads(body)
    status, body = raw_request(loopback_serve, b"GET /debug/api/tags HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert (status, orjson.loads(body)["error_type"]) == (403, "host_not_allowed")
    assert orjson.loads(body)["error_message"].startswith(
        "a request without a Host header (HTTP/1.1 requires one) is not allowed here: ")


def test_serve_listening_on_every_address_checks_no_host(tmp_path):
    """GLEANPIPE_HOST=0.0.0.0: the user exposed serve on purpose, and any Host is answered (this one
    passes without the check too: it keeps the check to loopback)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServeProcess(data_dir, env={"GLEANPIPE_HOST": "0.0.0.0"}).start()
    try:
        for path in ("/debug/api/tags", "/debug", "/dictionary/api/apps.json", "/dictionary/"):
            status, body, _ = request(server, "GET", path, f"evil.example:{server.port}")
            assert status == 200, (path, body)
        status, body, _ = request(server, "GET", "/", "evil.example")
        assert status == 404 and orjson.loads(body)["error_type"] != "host_not_allowed"
    finally:
        server.stop()


def test_allowed_hosts_setting_is_checked_before_serve_starts(tmp_path):
    for value in ("gleanpipe.test:8080", "http://gleanpipe.test", "a/b", "*", "a..b"):
        with taken_port() as port:
            out = run_cli("serve", "--data-dir", str(tmp_path / "data"), "--port", str(port),
                          env={"GLEANPIPE_ALLOWED_HOSTS": value}, timeout=60)
        assert out.returncode == 2, out.stderr
        assert f"GLEANPIPE_ALLOWED_HOSTS: {value.lower()!r} is not a host name" in out.stderr, out.stderr
    config = Config.from_env(environ={"GLEANPIPE_ALLOWED_HOSTS": " Gleanpipe.Test, .example.test,,[::1] "})
    assert config.allowed_hosts == ("gleanpipe.test", ".example.test", "[::1]")
    assert Config.from_env(environ=config.as_env()).allowed_hosts == config.allowed_hosts
    assert Config.from_env(environ={}).allowed_hosts == ()
    with pytest.raises(SettingError):
        Config.from_env(environ={"GLEANPIPE_ALLOWED_HOSTS": "a b"})


def test_which_hosts_and_bind_addresses_are_loopback():
    assert [listens_on_loopback(h) for h in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost",
                                             "::ffff:127.0.0.1")] == [True] * 6
    assert [listens_on_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "no-such-name.invalid")] == [False] * 4
    assert [host_name(v) for v in ("LocalHost:8080", "[::1]:80", "::1", "a:b", ":80", "")] == [
        "localhost", "[::1]", None, None, None, None]
    assert [allowed_host(n) for n in ("localhost", "x.localhost", "127.255.0.1", "[::1]", "[::ffff:127.0.0.1]",
                                      "localhost.")] == [True] * 6
    assert [allowed_host(n) for n in ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "[::2]",
                                      "0.0.0.0", "x.test")] == [False] * 6
    assert allowed_host("x.test", (".test",)) and allowed_host("test", (".test",)) and not allowed_host("xtest", (".test",))
