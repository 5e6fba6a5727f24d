"""The real Glean.js (npm @mozilla/glean, pinned in tests/gleanjs/package-lock.json) in a real
browser (Debian's headless Chromium, through Playwright) uploads to a live `gleanpipe serve`, and
its pings land as rows.

`make gleanjs` (which `make test` runs) installs Glean.js into build/gleanjs/, translates
tests/gleanjs/metrics.yaml and pings.yaml with glean_parser into the JavaScript Glean.js imports,
and bundles tests/gleanjs/page.js with esbuild. The page comes from one local server (its own
origin), and Glean.js sends to serve on another port.

What Glean.js 5.0.10 does (its package's dist/, read after `npm ci`):
- core/config.js: `new Configuration` throws "Unable to initialize Glean, serverEndpoint <url>
  must use the HTTPS protocol." when the endpoint starts with "http:" and `Context.testing` is
  false. No host is exempt (localhost and 127.0.0.1 neither). `Context.testing` is set only by
  testInitializeGlean (core/testing/utils.js, `@mozilla/glean/testing`), which also swaps the web
  platform for the test platform (platform/test/index.js: a mock uploader that uploads nothing,
  in-memory storage, "Unknown" os). So a real page needs an https: endpoint.
- core/utils.js validateURL: the endpoint is scheme, host and an optional port, with at most a
  trailing slash: no path.
- platform/browser/web/index.js: the web platform's uploader is the sendBeacon fallback uploader
  (platform/browser/sendbeacon_fallback_uploader.js): without a debug view tag or source tags it
  sends each ping with navigator.sendBeacon (the JSON text uncompressed, text/plain, no header of
  its own, and a ping counts as sent once the browser queued it); with either set, or when the
  browser refuses the beacon, it uses fetch (platform/browser/fetch_uploader.js: gzip,
  X-Telemetry-Agent, X-Debug-ID, X-Source-Tags, a preflight).

serve speaks HTTPS itself (GLEANPIPE_TLS_CERT / GLEANPIPE_TLS_KEY), with a certificate of a CA
made by the test (tls_certs.py), which the browser context is told to accept.
"""

from __future__ import annotations

import datetime
import json
import socket
import time

import pytest

from conftest import ROOT, ServeProcess, web_origin
from tls_certs import make_ca

BUNDLE = ROOT / "build" / "gleanjs" / "page.bundle.js"
DATASET = "org_example_webtool"
PAGE = b"""<!doctype html><meta charset="utf-8"><title>web tool</title>
<script src="/page.bundle.js"></script>"""


@pytest.fixture(scope="module")
def web_app():
    """The web app's own origin: another server, another port."""
    if not BUNDLE.exists():
        pytest.skip("Glean.js is not built: run `make gleanjs` (it needs npm and the npm registry)")
    with web_origin({"/": (PAGE, "text/html; charset=utf-8"),
                     "/page.bundle.js": (BUNDLE.read_bytes(), "text/javascript; charset=utf-8")}) as url:
        yield url


@pytest.fixture(scope="module")
def https_serve(tmp_path_factory):
    """A live `gleanpipe serve` speaking HTTPS itself (GLEANPIPE_TLS_CERT / GLEANPIPE_TLS_KEY)."""
    folder = tmp_path_factory.mktemp("gleanjs")
    data_dir = folder / "data"
    data_dir.mkdir()
    certs = make_ca(folder / "certs")
    server = ServeProcess(data_dir, env={"GLEANPIPE_TLS_CERT": str(certs.cert), "GLEANPIPE_TLS_KEY": str(certs.key)})
    server.url = server.https_url = f"https://127.0.0.1:{server.port}"
    yield server.start()
    server.stop()


def open_page(browser, web_app: str):
    """The page in a fresh context (its own storage: a new client), and the list its console
    messages go to."""
    context = browser.new_context(ignore_https_errors=True)  # a certificate of the test's own CA
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text))
    page.goto(web_app)
    return context, page, console


def wait_console(page, console: list[str], text: str, count: int, timeout: float = 20) -> None:
    """Wait until ``count`` of the page's console messages hold ``text`` (Glean.js's log lines)."""
    deadline = time.monotonic() + timeout
    while sum(text in m for m in console) < count:
        assert time.monotonic() < deadline, f"never saw {count} times {text!r}: {console}"
        page.wait_for_timeout(50)  # Playwright delivers console messages while it waits


def use_the_web_tool(browser, web_app: str, server, **options) -> dict:
    """Start Glean.js (``options``: debugViewTag, sourceTags), use the web tool, and wait until
    both its pings are rows. Returns the pings as Glean.js logged them (setLogPings), by type."""
    context, page, console = open_page(browser, web_app)
    try:
        assert page.evaluate("location.origin") != server.https_url  # another origin
        page.evaluate("([e, o]) => window.webtool.start(e, o)", [server.https_url, options])
        page.evaluate("window.webtool.use()")
        wait_console(page, console, "successfully sent 200.", 2)
        logged = [json.loads(m.split(" ", 1)[1]) for m in console if m.startswith("(Glean.core.Pings.Maker) {")]
        pings = {"events" if "events" in p else "webtool_usage": p for p in logged}
        assert len(logged) == len(pings) == 2, console
        client = pings["events"]["client_info"]["client_id"]
        # a beacon counts as sent once the browser queued it: wait for the rows before the page goes
        for table in pings:
            assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.{table} "
                                    f"WHERE client_info.client_id = '{client}'", 1, timeout=20) == 1, table
    finally:
        context.close()
    return pings


def rows(server, sql: str) -> list[dict]:
    columns, values = server.query(sql)
    return [dict(zip(columns, row)) for row in values]


def client_info_of(logged: dict) -> dict:
    """The row's client_info for a ping Glean.js logged: its fields, and None in the columns it
    has no value for."""
    return {**dict.fromkeys(["build_date", "device_manufacturer", "device_model", "android_sdk_version",
                             "windows_build_number", "attribution", "distribution"]),
            **logged["client_info"]}


@pytest.mark.e2e
@pytest.mark.parametrize("options, uploader", [
    ({}, "sendBeacon"),
    ({"debugViewTag": "webtool-check", "sourceTags": ["automation", "webtool"]}, "fetch"),
], ids=["beacon", "fetch-with-debug-headers"])
def test_real_glean_js_pings_land_as_rows(web_app, https_serve, browser, options, uploader):
    pings = use_the_web_tool(browser, web_app, https_serve, **options)
    usage, events = pings["webtool_usage"], pings["events"]
    client = usage["client_info"]["client_id"]

    # what Glean.js itself put in the pings (its own words, from the console)
    assert usage["metrics"] == {
        "counter": {"webtool.launch_count": 3},
        "labeled_counter": {"webtool.tool_used": {"hammer": 2, "pliers": 1, "__other__": 4}},
        "string": {"webtool.active_theme": "solarized"},
    }
    assert usage["client_info"] == events["client_info"]
    assert {k: v for k, v in usage["client_info"].items() if k not in ("client_id", "session_id", "first_run_date")} == {
        "telemetry_sdk_build": "5.0.10", "session_count": 1, "os": "Linux", "os_version": "Unknown",
        "architecture": "Unknown", "locale": "en-US", "app_build": "2026.12.1", "app_display_version": "3.1.4",
        "app_channel": "nightly"}
    [event] = events["events"]
    glean_ms = int(event["extra"]["glean_timestamp"])
    assert event == {"category": "webtool", "name": "button_clicked", "timestamp": 0,
                     "extra": {"button": "save", "times": "2", "glean_timestamp": str(glean_ms)}}

    # the rows
    if uploader == "fetch":  # fetch's headers; Date is a forbidden header, and Chromium drops it
        header = {"date": None, "parsed_date": None, "x_debug_id": "webtool-check", "x_source_tags": "automation,webtool",
                  "parsed_x_source_tags": ["automation", "webtool"], "x_telemetry_agent": "Glean/5.0.10 (JS on Linux)"}
    else:  # sendBeacon: the bare JSON text, no header of Glean.js's own
        header = {"date": None, "parsed_date": None, "x_debug_id": None, "x_source_tags": None,
                  "parsed_x_source_tags": [], "x_telemetry_agent": None}
    [row] = rows(https_serve, f"SELECT document_id, client_info, ping_info, metadata, normalized_channel, normalized_os, "
                              f"m.metrics FROM {DATASET}.webtool_usage AS m WHERE client_info.client_id = '{client}'")
    assert row["client_info"] == client_info_of(usage)
    assert row["ping_info"]["reason"] == "manual" and row["ping_info"]["seq"] == 0
    assert row["ping_info"]["start_time"] == usage["ping_info"]["start_time"]
    assert (row["normalized_channel"], row["normalized_os"]) == ("nightly", "Linux")
    assert row["metrics"] == {
        "counter": {"webtool_launch_count": 3},
        "labeled_counter": {"webtool_tool_used": [{"key": "hammer", "value": 2}, {"key": "pliers", "value": 1},
                                                  {"key": "__other__", "value": 4}]},
        "string": {"webtool_active_theme": "solarized"},
    }
    assert {k: row["metadata"]["header"][k] for k in header} == header
    assert "HeadlessChrome/" in row["metadata"]["header"]["user_agent"]
    assert {k: row["metadata"][k] for k in ("app_id", "document_type", "document_version")} == {
        "app_id": "org-example-webtool", "document_type": "webtool-usage", "document_version": "1"}

    [row] = rows(https_serve, f"SELECT document_id, client_info, ping_info, metadata, events "
                              f"FROM {DATASET}.events WHERE client_info.client_id = '{client}'")
    assert row["client_info"] == client_info_of(events)
    assert (row["ping_info"]["reason"], row["metadata"]["document_type"]) == ("max_capacity", "events")
    assert {k: row["metadata"]["header"][k] for k in header} == header
    assert row["events"] == [{"category": "webtool", "name": "button_clicked", "timestamp": 0, "session": None,
                              "extra": [{"key": "button", "value": "save"}, {"key": "times", "value": "2"},
                                        {"key": "glean_timestamp", "value": str(glean_ms)}]}]
    [stream] = rows(https_serve, f"SELECT * FROM {DATASET}.events_stream WHERE client_id = '{client}'")
    assert {k: v for k, v in stream.items() if k != "submission_timestamp"} == {
        "document_id": row["document_id"], "event_index": 0, "client_id": client, "ping": "events",
        "sample_id": stream["sample_id"], "normalized_channel": "nightly", "normalized_os": "Linux",
        "app_display_version": "3.1.4", "category": "webtool", "name": "button_clicked", "timestamp": 0,
        "event_timestamp": datetime.datetime.fromtimestamp(glean_ms / 1000, datetime.timezone.utc).isoformat(
            timespec="microseconds"),
        "extra": [{"key": "button", "value": "save"}, {"key": "times", "value": "2"},
                  {"key": "glean_timestamp", "value": str(glean_ms)}]}


@pytest.mark.e2e
def test_real_glean_js_refuses_an_http_endpoint_and_one_with_a_path(web_app, https_serve, browser):
    """Glean.js 5 throws on an http: serverEndpoint outside its test mode, loopback included, and on
    an endpoint with a path (the README says so: serve needs HTTPS for a web page, at the root of
    a host)."""
    plain = f"http://127.0.0.1:{https_serve.port}"
    localhost = plain.replace("127.0.0.1", "localhost")
    for endpoint, says in [(plain, "must use the HTTPS protocol."), (localhost, "must use the HTTPS protocol."),
                           (https_serve.https_url + "/glean", "is an invalid URL.")]:
        context, page, _ = open_page(browser, web_app)
        try:
            with pytest.raises(Exception) as error:
                page.evaluate("e => window.webtool.start(e)", endpoint)
        finally:
            context.close()
        assert f"Unable to initialize Glean, serverEndpoint {endpoint} {says}" in str(error.value)


@pytest.mark.e2e
def test_real_glean_js_with_serve_unreachable(tmp_path, web_app, browser):
    """What the README says of a ping that does not arrive: sent by sendBeacon, Glean.js counts it
    as sent (and it is gone); sent by fetch, it is a recoverable failure kept in the page's memory
    only, as Glean.js removes a ping from its storage (localStorage "pings") when it queues it."""
    with socket.socket() as closed:  # a port nothing listens on: serve is down
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    endpoint = f"https://127.0.0.1:{port}"
    for options, expected in [({}, "successfully sent 200."),
                              ({"debugViewTag": "webtool-check"}, "Recoverable upload failure")]:
        context, page, console = open_page(browser, web_app)
        try:
            page.evaluate("([e, o]) => window.webtool.start(e, o)", [endpoint, options])
            page.evaluate("window.webtool.use()")
            wait_console(page, console, expected, 2)
            assert page.evaluate("localStorage.getItem('pings')") == "{}"
            assert not [m for m in console if "successfully sent" in m and expected not in m], console
        finally:
            context.close()
