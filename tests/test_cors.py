"""CORS on submit, for Glean.js in a web page: a real browser (Debian's headless Chromium, driven by
Playwright as in test_dictionary_browser.py) on a page from another origin uploads pings to a live
`gleanpipe serve` the way Glean.js's uploaders do, and raw HTTP checks the preflight and the headers
of 200/400/503 answers under serve (spool on and off) and the submit function.

What Glean.js sends (mozilla/glean.js, glean/src/platform/browser/fetch_uploader.ts, the web
platform's uploader, and glean/src/core/upload/worker.ts, ping_request.ts): a POST with fetch,
``keepalive: true`` (again without it after a TypeError), ``credentials: "omit"``,
``redirect: "error"``; headers Content-Type ``application/json; charset=utf-8``, Date,
X-Telemetry-Agent ``Glean/<version> (JS on <os>)``, Content-Length, X-Debug-ID and X-Source-Tags
when set, and Content-Encoding ``gzip`` over a gzip body (fflate's gzipSync). Date and
Content-Length are forbidden request headers: the browser drops them. Its sendBeacon uploader sends
the JSON text uncompressed, with no headers of its own (the browser's text/plain).
"""

from __future__ import annotations

import http.client
import json
import uuid

import orjson
import pytest
from functions_framework import create_app

from conftest import APP, DATASET, ROOT, SDK_HEADERS, ServeProcess, gz, make_ping, submit_path, web_origin

CLIENT = "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
ORIGIN = "http://localhost:3000"
# what Chromium sends in a preflight for Glean.js's fetch with both debug headers set
REQUESTED = "content-encoding,content-type,x-debug-id,x-source-tags,x-telemetry-agent"
# the answer to it: the headers asked for are allowed
PREFLIGHT = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, PUT",
    "access-control-allow-headers": "content-encoding, content-type, x-debug-id, x-source-tags, x-telemetry-agent",
    "access-control-max-age": "86400",
}
# a preflight that does not say which headers it wants is allowed those Glean.js sends
GLEAN_JS_HEADERS = "Content-Type, Content-Encoding, X-Telemetry-Agent, X-Debug-ID, X-Source-Tags"
UNNAMED = {**PREFLIGHT, "access-control-allow-headers": GLEAN_JS_HEADERS}


def raw(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, lower-cased headers, body) of one request, as sent (http.client adds nothing)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def cors_of(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


@pytest.fixture(scope="module", params=["on", "off"], ids=["spool-on", "spool-off"])
def cors_serve(request, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp(f"cors-{request.param}") / "data"
    data_dir.mkdir(parents=True)
    server = ServeProcess(data_dir, env={"GLEANPIPE_SPOOL": request.param}).start()
    yield server
    server.stop()


def preflight_request(url: str, path: str):
    return raw(url, "OPTIONS", path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": REQUESTED})


def test_preflight_and_cors_on_200_400_503_under_serve(cors_serve):
    url, store = cors_serve.url, cors_serve.data_dir / "store"
    doc_id = str(uuid.uuid4())
    status, headers, body = preflight_request(url, submit_path("metrics", doc_id))
    assert (status, cors_of(headers), body) == (204, PREFLIGHT, b"")
    assert "content-length" not in headers  # a 204 has none
    assert headers["vary"] == "Access-Control-Request-Headers"
    # any submit path: the POST's own 4xx then tells the SDK to drop the ping (a failed preflight
    # would be a network error, retried); runs of slashes count as one, as for the POST
    for path in ["/submit/bad;app/metrics/1/x", "/submit/a/b", "//submit/" + APP + "/metrics/1/" + doc_id,
                 "/submit/" + "x" * 600]:
        status, headers, _ = preflight_request(url, path)
        assert (status, cors_of(headers)) == (204, PREFLIGHT), path

    sent = {**SDK_HEADERS, "Origin": ORIGIN}
    status, headers, _ = raw(url, "POST", submit_path("metrics", doc_id), gz(make_ping(CLIENT)), sent)
    assert (status, cors_of(headers)) == (200, {"access-control-allow-origin": "*"})
    status, headers, body = raw(url, "POST", submit_path(), gz(b"not json"), sent)
    assert (status, json.loads(body)["error_type"], cors_of(headers)) == (400, "json", {"access-control-allow-origin": "*"})
    for path, code in [("/submit/a/b", 404), ("/submit/" + "x" * 600, 414)]:
        status, headers, _ = raw(url, "POST", path, gz(make_ping(CLIENT)), sent)
        assert (status, cors_of(headers)) == (code, {"access-control-allow-origin": "*"})
    status, headers, _ = raw(url, "GET", submit_path(), headers={"Origin": ORIGIN})
    assert (status, headers["allow"], cors_of(headers)) == (405, "POST, PUT, OPTIONS", {"access-control-allow-origin": "*"})

    # 503: the error store cannot be written (its folder is a file), so a bad ping's rejection
    # cannot be kept and the SDK is told to retry
    errors = store / "errors"
    moved = store.parent / "errors-away"
    if errors.exists():
        errors.rename(moved)
    errors.write_text("not a folder")
    try:
        status, headers, body = raw(url, "POST", submit_path(), gz(b"not json"), sent)
    finally:
        errors.unlink()
        if moved.exists():
            moved.rename(errors)
    assert (status, json.loads(body)["error_type"]) == (503, "store_unavailable")
    assert (headers["retry-after"], cors_of(headers)) == ("5", {"access-control-allow-origin": "*"})
    assert cors_serve.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1 WHERE document_id = '{doc_id}'", 1) == 1


@pytest.mark.parametrize("requested, allowed", [
    # a header Glean.js does not send today (a later Glean.js, a page's own uploader): allowed, or
    # the browser would fail the preflight and Glean.js retry the ping for ever
    ("content-type, x-glean-future,Authorization", "content-type, x-glean-future, Authorization"),
    (None, GLEAN_JS_HEADERS),  # none named: what Glean.js sends
    ("", GLEAN_JS_HEADERS),
    ("content-type, bad header", GLEAN_JS_HEADERS),  # not a list of header names: not echoed
    ("content-type,,x-a", GLEAN_JS_HEADERS),
    ("x-a;b", GLEAN_JS_HEADERS),
])
def test_a_preflight_allows_the_headers_it_asks_for(cors_serve, requested, allowed):
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    if requested is not None:
        headers["Access-Control-Request-Headers"] = requested
    status, answer, _ = raw(cors_serve.url, "OPTIONS", submit_path(), headers=headers)
    assert (status, answer["access-control-allow-headers"], answer["access-control-allow-origin"]) == (204, allowed, "*")


def test_no_cors_beside_submit(cors_serve):
    """/debug, /dictionary, other paths and the admin API answer as before, with no CORS header;
    OPTIONS there keeps its old answer."""
    url = cors_serve.url
    assert raw(url, "OPTIONS", "/debug/")[0] == 405
    for method, path, code in [("OPTIONS", "/debug/", 405), ("GET", "/debug/", 200), ("GET", "/debug/api/tags", 200),
                               ("OPTIONS", "/dictionary/", 405), ("GET", "/dictionary/", 200),
                               ("OPTIONS", "/", 404), ("OPTIONS", "/other/a/b/1/x", 404), ("POST", "/", 404),
                               ("OPTIONS", "/submitted/a/b/1/x", 404)]:
        status, headers, _ = raw(url, method, path, headers={"Origin": ORIGIN})
        assert (status, cors_of(headers)) == (code, {}), (method, path)
    admin = cors_serve.admin
    status, headers, _ = raw(admin.url, "OPTIONS", "/query", headers={"Origin": ORIGIN})
    assert cors_of(headers) == {}, status
    status, headers, _ = raw(admin.url, "GET", "/status", headers={"Origin": ORIGIN})
    assert cors_of(headers) == {}, status


# --- the submit function (functions/main.py under functions-framework) -------------------------

@pytest.fixture
def client(fn_env):
    return create_app(target="submit", source=str(ROOT / "functions" / "main.py")).test_client()


def test_preflight_and_cors_under_the_submit_function(client, fn_env):
    resp = client.options(submit_path(), headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": REQUESTED})
    assert (resp.status_code, cors_of({k.lower(): v for k, v in resp.headers.items()}), resp.data) == (204, PREFLIGHT, b"")
    sent = {**SDK_HEADERS, "Origin": ORIGIN}
    ok = client.post(submit_path(), data=gz(make_ping(CLIENT)), headers=sent)
    bad = client.post(submit_path(), data=gz(b"not json"), headers=sent)
    assert [(r.status_code, r.headers.get("Access-Control-Allow-Origin")) for r in (ok, bad)] == [(200, "*"), (400, "*")]
    (fn_env / "store" / "raw" / "other-app").write_text("not a folder")  # its pings cannot be stored
    fail = client.post(submit_path(app="other-app"), data=gz(make_ping(CLIENT)), headers=sent)
    assert (fail.status_code, fail.headers["Retry-After"], fail.headers["Access-Control-Allow-Origin"]) == (503, "5", "*")
    other = client.open("/elsewhere", method="OPTIONS", headers={"Origin": ORIGIN})
    assert (other.status_code, other.headers.get("Access-Control-Allow-Origin")) == (404, None)


def test_a_misconfigured_function_still_answers_preflights_and_its_503_is_readable(client, fn_env, monkeypatch):
    from gleanpipe import functions

    monkeypatch.setenv("GLEANPIPE_MAX_WIRE_BYTES", "1MB")  # not a number: the handler cannot be built
    functions.submit_handler.cache_clear()
    pre = client.options(submit_path(), headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert (pre.status_code, pre.headers["Access-Control-Allow-Methods"]) == (204, "POST, PUT")
    assert pre.headers["Access-Control-Allow-Headers"] == GLEAN_JS_HEADERS
    pre = client.options(submit_path(), headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "x-a,content-type"})
    assert (pre.status_code, pre.headers["Access-Control-Allow-Headers"]) == (204, "x-a, content-type")
    resp = client.post(submit_path(), data=gz(make_ping(CLIENT)), headers={**SDK_HEADERS, "Origin": ORIGIN})
    assert (resp.status_code, resp.get_json()["error_type"], resp.headers["Access-Control-Allow-Origin"]) == (
        503, "misconfigured", "*")
    assert resp.headers["Retry-After"] == "60"
    assert "Access-Control-Allow-Origin" not in client.post("/elsewhere", data=b"{}").headers
    other = client.open("/elsewhere", method="OPTIONS", headers={"Origin": ORIGIN})  # no preflight beside submit
    assert (other.status_code, other.headers.get("Access-Control-Allow-Origin")) == (503, None)
    functions.submit_handler.cache_clear()


def test_a_misconfigured_functions_preflight_does_not_read_a_body_it_was_sent(tmp_path):
    """An OPTIONS that says it has a body (200 MB declared, 1 KiB sent) to a function whose settings
    cannot be read gets its 204 at once and the connection closes: functions-framework would read
    the whole body after the answer (as for the misconfigured 503, test_http_framing.py), and the
    client that waits for the answer before sending more would never get it. Real functions-framework."""
    import socket

    from test_http_framing import Function, closed_after, read_head

    (tmp_path / "data").mkdir()
    function = Function(tmp_path / "data", {"GLEANPIPE_STORE_URL": "nowhere://x"})
    try:
        with socket.create_connection(("127.0.0.1", function.port)) as sock:
            sock.sendall(f"OPTIONS {submit_path()} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\n"
                         f"Access-Control-Request-Method: POST\r\nContent-Length: {200 << 20}\r\n\r\n".encode()
                         + b"x" * 1024)
            headers: dict = {}
            top, _ = read_head(sock, 10, headers)
            assert (top.decode().split(" ")[1], cors_of(headers)) == ("204", UNNAMED)
            assert closed_after(sock)
    finally:
        function.stop()


def test_the_wsgi_apps_204_has_no_content_length_and_says_no_content(tmp_path):
    """make_wsgi_app itself, called as a WSGI server calls it: the preflight's status line says
    "204 No Content" and it has no Content-Length (RFC 9110, 8.6). gunicorn 27 drops a 204's
    Content-Length on its own; the gunicorn this project allows (>=22) need not."""
    import io

    from gleanpipe.config import Config
    from gleanpipe.http_edge import SubmitHandler, make_wsgi_app
    from gleanpipe.storage.local import LocalStore

    handler = SubmitHandler(Config.from_env(environ={}, data_dir=tmp_path), LocalStore(tmp_path / "store"))
    started = []
    environ = {"REQUEST_METHOD": "OPTIONS", "PATH_INFO": submit_path(), "RAW_URI": submit_path(),
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO(b""), "HTTP_ORIGIN": ORIGIN,
               "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST"}
    body = b"".join(make_wsgi_app(handler)(environ, lambda status, headers, exc_info=None: started.append(
        (status, headers))))
    [(status, headers)] = started
    assert (status, body) == ("204 No Content", b"")
    assert [name for name, _ in headers if name.lower() == "content-length"] == []
    assert cors_of({k.lower(): v for k, v in headers}) == UNNAMED


# --- a real browser ------------------------------------------------------------------------------

# The page's script does what Glean.js's uploaders do (fetch_uploader.ts, sendbeacon_uploader.ts),
# with the browser's CompressionStream standing in for fflate's gzipSync (both write one gzip member).
PAGE = """<!doctype html><meta charset="utf-8"><title>web app</title><script>
async function gzipText(text) {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
async function gleanFetch(url, ping, extra) {
  const body = await gzipText(JSON.stringify(ping));
  const headers = {"Content-Type": "application/json; charset=utf-8", "Date": new Date().toISOString(),
                   "X-Telemetry-Agent": "Glean/5.0.8 (JS on Linux)", "Content-Encoding": "gzip",
                   "Content-Length": String(body.length), ...extra};
  const post = async (keepalive) => {
    try {
      const r = await fetch(url, {headers, method: "POST", body, keepalive, credentials: "omit",
                                  redirect: "error"});
      return {status: r.status};
    } catch (e) {
      if (e instanceof TypeError && keepalive) return post(false);  // as Glean.js: again without keepalive
      return {error: String(e)};
    }
  };
  return post(true);
}
function gleanBeacon(url, ping) { return navigator.sendBeacon(url, JSON.stringify(ping)); }
</script>"""


@pytest.fixture(scope="module")
def web_app():
    """The web app's own origin: another server, another port."""
    with web_origin({"/": (PAGE.encode(), "text/html; charset=utf-8")}) as url:
        yield url


@pytest.mark.e2e
def test_glean_js_uploads_from_another_origin_reach_the_warehouse(cors_serve, web_app, browser):
    """Before: the preflight got a 405, Chromium refused the POST ("TypeError: Failed to fetch"),
    and no row ever came; the SDK would retry it for ever."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(web_app)
    assert page.evaluate("location.origin") != cors_serve.url  # another origin
    fetched, beaconed, refused = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    ping = make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 7}})
    url = cors_serve.url + submit_path("metrics", fetched)
    got = page.evaluate("([u, p, h]) => gleanFetch(u, p, h)",
                        [url, ping, {"X-Debug-ID": "cors-check", "X-Source-Tags": "automation",
                                     "X-Glean-Future": "1"}])  # a header Glean.js does not send today
    assert got == {"status": 200}
    # a ping the schema refuses: Glean.js must see the 400 (and delete the ping), not a network error
    got = page.evaluate("([u, p, h]) => gleanFetch(u, p, h)",
                        [cors_serve.url + submit_path("metrics", refused), {"ping_info": "no"}, {}])
    assert got == {"status": 400}
    assert page.evaluate("([u, p]) => gleanBeacon(u, p)", [cors_serve.url + submit_path("metrics", beaconed), ping])
    context.close()

    table = f"{DATASET}.metrics_v1"
    assert cors_serve.wait_rows(f"SELECT count(*) FROM {table} WHERE document_id IN ('{fetched}', '{beaconed}')", 2) == 2
    rows = cors_serve.query(
        f"SELECT document_id, metrics.counter.toolbox_launch_count, metadata.header.x_debug_id, "
        f"metadata.header.x_source_tags, metadata.header.x_telemetry_agent, metadata.header.date "
        f"FROM {table} WHERE document_id IN ('{fetched}', '{beaconed}') ORDER BY document_id = '{beaconed}'")[1]
    assert [list(r) for r in rows] == [
        # Date was set, but is a forbidden header: Chromium did not send it
        [fetched, 7, "cors-check", "automation", "Glean/5.0.8 (JS on Linux)", None],
        [beaconed, 7, None, None, None, None],  # sendBeacon: the bare JSON text
    ]
    assert cors_serve.try_query(f"SELECT count(*) FROM {table} WHERE document_id = '{refused}'") in (None, [[0]], [(0,)])
    [record] = [orjson.loads(p.read_bytes()) for p in (cors_serve.data_dir / "store" / "errors").rglob("*.json")
                if orjson.loads(p.read_bytes()).get("document_id") == refused]
    assert (record["status"], record["error_type"]) == (400, "schema")


