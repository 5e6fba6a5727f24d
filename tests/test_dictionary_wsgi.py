"""The /dictionary WSGI app in process, on a real DuckDB file (no serve)."""

from __future__ import annotations

import json

from conftest import DATASET


def test_dictionary_wsgi_app_in_process_mounted_or_not(warehouse):
    """The /dictionary WSGI app on a real DuckDB file, called through the mounting dispatcher
    (prefix moved to SCRIPT_NAME) and directly with the full path: same answers."""
    from pathlib import Path
    from wsgiref.util import setup_testing_defaults

    from gleanpipe.dictionary.catalog import store_app
    from gleanpipe.dictionary.definitions import parse
    from gleanpipe.dictionary.web import make_dictionary_app
    from gleanpipe.wsgi_mounts import PrefixDispatcher

    glean = Path(__file__).parent / "glean_client"
    store_app(warehouse, parse("org.example.toolbox", [glean / "metrics.yaml"], [glean / "pings.yaml"]))
    direct = make_dictionary_app(warehouse.query)
    # a marker app in submit's place: the check is that /dictionary paths never reach it
    submit = lambda environ, start_response: (start_response("404 Not Found", []), [b"submit"])[1]
    mounted = PrefixDispatcher(submit, {"/dictionary": direct})

    def call(app, path, method="GET"):
        environ = {"PATH_INFO": path, "REQUEST_METHOD": method}
        setup_testing_defaults(environ)
        out = {}
        body = b"".join(app(environ, lambda status, headers: out.update(status=status, headers=dict(headers))))
        return out["status"], out["headers"], body

    for app in (direct, mounted):
        status, headers, body = call(app, f"/dictionary/api/apps/{DATASET}.json")
        assert status == "200 OK" and headers["Content-Type"] == "application/json"
        metrics = {m["id"]: m for m in json.loads(body)["metrics"]}
        assert metrics["toolbox.launch_count"]["status"] == "no data yet"
        assert call(app, "/dictionary")[:2] == ("301 Moved Permanently", {"Location": "/dictionary/",
                                                                         "Content-Length": "0"})
        status, _, body = call(app, f"/dictionary/apps/{DATASET}/metrics/toolbox.launch_count.html")
        assert status == "200 OK" and b"no data yet" in body
        assert call(app, "/dictionary/api/apps.json", "DELETE")[0] == "405 Method Not Allowed"
        # HEAD: GET's status and headers (its Content-Length too), and no body
        got, head = call(app, "/dictionary/api/apps.json"), call(app, "/dictionary/api/apps.json", "HEAD")
        assert head[:2] == got[:2] and int(head[1]["Content-Length"]) == len(got[2]) > 0
        assert head[2] == b""
    assert call(mounted, "/submit/x")[2] == b"submit"
    assert call(mounted, "/dictionaryx")[2] == b"submit"


def test_parsing_definitions_leaves_submit_error_messages_alone():
    """glean_parser patches jsonschema's classes process-wide; parse() must undo that, or the
    submit edge's 400 messages change wording after an in-process `apps add`."""
    from pathlib import Path

    from gleanpipe.dictionary.definitions import parse
    from gleanpipe.validation import PingValidator

    doc = {"client_info": {"client_id": "x"}, "ping_info": {}}
    before = PingValidator().validate(doc)
    glean = Path(__file__).parent / "glean_client"
    assert len(parse("org.example.toolbox", [glean / "metrics.yaml"], [])["metrics"]) == 28
    after = PingValidator().validate(doc)
    assert after == before and any("is a required property" in m for m in after)


def apps_through_serve(data_dir, admin_url: str, token: str) -> tuple[str, bytes]:
    """GET /dictionary/api/apps.json through admin_query (as in serve's HTTP workers), with a state
    file naming ``admin_url`` and the data dir's lock held, as a running serve has them."""
    import os
    from wsgiref.util import setup_testing_defaults

    from gleanpipe.serve_state import STATE_FILE, take_serve_lock
    from gleanpipe.dictionary.web import admin_query, make_dictionary_app

    (data_dir / STATE_FILE).write_text(json.dumps({"pid": os.getpid(), "token": token, "admin_url": admin_url}))
    lock = take_serve_lock(data_dir)
    try:
        environ = {"PATH_INFO": "/dictionary/api/apps.json", "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        out = {}
        body = b"".join(make_dictionary_app(admin_query(data_dir))(
            environ, lambda status, headers: out.update(status=status)))
    finally:
        os.close(lock)
    return out["status"], body


def test_dictionary_page_while_serve_cannot_be_reached_is_a_503(tmp_path):
    """Through admin_query (as in serve's HTTP workers): a serve whose state file names an admin
    port nothing listens on. Before: serve's "cannot reach" error fell through to a 500."""
    from gleanpipe.emulate import free_port

    status, body = apps_through_serve(tmp_path, f"http://127.0.0.1:{free_port()}", "t")
    assert status == "503 Service Unavailable"
    assert json.loads(body)["error"].startswith("the warehouse is not reachable: cannot reach gleanpipe serve at http://")


def _apps_through_an_admin_server(tmp_path, wh, query_max_bytes: int):
    """The dictionary's apps page through admin_query and a real admin server on ``wh`` (closed after)."""
    from gleanpipe.admin import AdminServer

    server = AdminServer(status=wh.status, query=wh.read_query_pages, load_keys=lambda keys: {},
                         query_max_bytes=query_max_bytes)
    server.start()
    try:
        return apps_through_serve(tmp_path, server.url, server.token)
    finally:
        server.httpd.shutdown()
        wh.close()


def test_a_dictionary_query_that_fails_in_serve_is_a_500_that_says_why_not_a_503(tmp_path):
    """Through admin_query and a real admin server: serve answers a query of the dictionary's that
    fails (here a catalog table of another shape) with 400, the query's fault. The page said 503
    "the warehouse is not reachable", which sends the reader looking for a serve that is running."""
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse(str(tmp_path / "w.duckdb"))
    wh.con.execute("CREATE TABLE _gleanpipe.apps (something_else VARCHAR)")  # not the catalog's columns
    status, body = _apps_through_an_admin_server(tmp_path, wh, query_max_bytes=1 << 20)
    assert status == "500 Internal Server Error"
    error = json.loads(body)["error"]
    assert error.startswith("QueryRefused: ") and "not reachable" not in error, error


def test_a_dictionary_answer_over_the_query_limit_is_a_5xx_that_says_so_not_a_413_or_503(tmp_path):
    """Through admin_query and a real admin server whose GLEANPIPE_QUERY_MAX_BYTES the catalog's
    answer is over: the page is a 500 whose text names the limit and what to do. Not 503 "the
    warehouse is not reachable" for a serve that is running; not "ResultTooLarge: " before the
    message (a traceback's words); and not a 413, which is for a request's content (a GET has none):
    the fault is serve's setting, which no request can get round, so a 5xx, as a watcher of serve's
    errors counts them."""
    from pathlib import Path

    from gleanpipe.dictionary.catalog import store_app
    from gleanpipe.dictionary.definitions import parse
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse(str(tmp_path / "w.duckdb"))
    glean = Path(__file__).parent / "glean_client"
    store_app(wh, parse("org.example.toolbox", [glean / "metrics.yaml"], [glean / "pings.yaml"]))
    status, body = _apps_through_an_admin_server(tmp_path, wh, query_max_bytes=64)
    assert status == "500 Internal Server Error"
    error = json.loads(body)["error"]
    # before: serve's advice for SQL of one's own, "add a LIMIT or select fewer columns", to a reader of a page
    assert error == ("this page's data is over 64 bytes as JSON, the most the running serve "
                     "answers (GLEANPIPE_QUERY_MAX_BYTES): restart serve with a higher GLEANPIPE_QUERY_MAX_BYTES, "
                     "or stop serve and run `gleanpipe dictionary build` (it then reads the DuckDB file itself, "
                     "with no such limit)"), error


def test_a_dictionary_query_serve_fails_on_is_a_500_naming_serves_error_not_a_503(tmp_path):
    """Through admin_query and a real admin server whose query handler raises a bug of serve's own,
    on purpose (no request can cause one). serve answered it 400, and the page said "QueryRefused:
    'no_such_key'", the dictionary's query at fault. Now serve answers 500, and the page is a 500
    that says the error is serve's (not a 503 "the warehouse is not reachable")."""
    from gleanpipe.admin import AdminServer

    def query(sql, params=None):
        raise KeyError("no_such_key")  # on purpose: a bug in serve

    server = AdminServer(status=dict, query=query, load_keys=lambda keys: {}, query_max_bytes=1 << 20)
    server.start()
    try:
        status, body = apps_through_serve(tmp_path, server.url, server.token)
    finally:
        server.httpd.shutdown()
    assert status == "500 Internal Server Error"
    assert json.loads(body)["error"] == (
        "ServeFailed: gleanpipe serve answered 500: KeyError: 'no_such_key' (an error of serve's own, not the "
        "request's: serve's log has its traceback)")
