"""`gleanpipe explore`: the warehouse exported to SQLite and served by a real Datasette process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from pathlib import Path

import duckdb
import pytest

from conftest import (DATASET, ServeProcess, children, ctrl_c_when_open, free_port, gz, host_refusal, make_ping, post,
                      submit_path, wait_gone)
from gleanpipe import explore as ex
from gleanpipe import rawobject
from gleanpipe.admin import ServeError
from gleanpipe.naming import DocumentPath

CLIENT = str(uuid.uuid4())
EXPLORER = "explore's Datasette"  # who refuses a Host, as its 403 says (host_check_plugin.SERVER)
METRICS = {
    "counter": {"toolbox.launch_count": 7},
    "string": {"toolbox.active_theme": "monokai ✓"},
    "string_list": {"toolbox.enabled_plugins": ["git", "lint"]},
    "labeled_counter": {"toolbox.tool_used": {"hammer": 2, "pliers": 1}},
    "timing_distribution": {"toolbox.render_time": {"sum": 32500000, "values": {"1982579": 1, "15379236": 2}}},
    "object": {"toolbox.open_tabs": [{"id": 1, "title": "Docs"}]},
}
EVENTS = [{"category": "toolbox", "name": "tool_opened", "timestamp": 0, "extra": {"tool": "hammer"}},
          {"category": "toolbox", "name": "tool_opened", "timestamp": 15, "extra": {"tool": "saw"}}]


def gleanpipe(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def send_known_pings(server: ServeProcess, n_plain: int = 4) -> dict:
    """One ping with known metrics and events, plus n_plain counters; waits until all are loaded."""
    ids = {"known": str(uuid.uuid4()), "plain": [str(uuid.uuid4()) for _ in range(n_plain)]}
    status, _, _ = post(server.url + submit_path("metrics", ids["known"]),
                        gz(make_ping(client_id=CLIENT, metrics=METRICS, events=EVENTS)))
    assert status == 200
    for i, doc_id in enumerate(ids["plain"]):
        doc = make_ping(client_id=str(uuid.uuid4()), metrics={"counter": {"toolbox.launch_count": i}})
        assert post(server.url + submit_path("metrics", doc_id), gz(doc))[0] == 200
    assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1", n_plain + 1) == n_plain + 1
    assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.events_stream", 2) == 2
    return ids


def fetch_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"explore exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"Datasette did not answer on {url}")


def assert_known_row(row: dict, ids: dict) -> None:
    """The ping with known values, read back from an exported row (nested columns are JSON text)."""
    assert row["document_id"] == ids["known"]
    assert json.loads(row["client_info"])["client_id"] == CLIENT
    assert json.loads(row["ping_info"])["reason"] == "active"
    metrics = json.loads(row["metrics"])
    assert metrics["counter"]["toolbox_launch_count"] == 7
    assert metrics["string"]["toolbox_active_theme"] == "monokai ✓"
    assert metrics["string_list"]["toolbox_enabled_plugins"] == ["git", "lint"]
    assert metrics["labeled_counter"]["toolbox_tool_used"] == [{"key": "hammer", "value": 2},
                                                                {"key": "pliers", "value": 1}]
    assert metrics["timing_distribution"]["toolbox_render_time"] == {
        "sum": 32500000, "values": [{"key": 1982579, "value": 1}, {"key": 15379236, "value": 2}]}
    assert metrics["object"]["toolbox_open_tabs"] == [{"id": 1, "title": "Docs"}]  # JSON column: embedded
    events = json.loads(row["events"])
    assert [(e["name"], e["extra"]) for e in events] == [("tool_opened", [{"key": "tool", "value": "hammer"}]),
                                                         ("tool_opened", [{"key": "tool", "value": "saw"}])]
    assert row["normalized_channel"] == "beta" and row["sample_id"] == zlib.crc32(CLIENT.encode()) % 100
    assert row["submission_timestamp"].endswith("Z") and row["submission_timestamp"][10] == "T"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("explore") / "data"
    data_dir.mkdir(parents=True)
    server = ServeProcess(data_dir).start()
    try:
        ids = send_known_pings(server)
        yield server, ids
    finally:
        server.stop()


def test_explore_while_serve_runs_serves_the_warehouse_in_datasette(loaded):
    server, ids = loaded
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gleanpipe.cli", "explore", "--data-dir", str(server.data_dir),
                             "--port", str(port), "--no-open"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/-/versions.json", proc)
        rows = fetch_json(f"{base}/{DATASET}/metrics_v1.json?_shape=array&document_id={ids['known']}")
        assert len(rows) == 1
        assert_known_row(rows[0], ids)
        # the warehouse's own timestamp, read through serve, is the exported one
        _, wh = server.query(f"SELECT strftime(submission_timestamp, '%Y-%m-%dT%H:%M:%S.%fZ') "
                             f"FROM {DATASET}.metrics_v1 WHERE document_id = '{ids['known']}'")
        assert rows[0]["submission_timestamp"] == wh[0][0]

        flat = fetch_json(f"{base}/{DATASET}/metrics_v1_flat.json?_shape=array&_sort=document_id")
        by_id = {r["document_id"]: r for r in flat}
        assert set(by_id) == {ids["known"], *ids["plain"]}
        known = by_id[ids["known"]]
        assert known["counter.toolbox_launch_count"] == 7
        assert known["string.toolbox_active_theme"] == "monokai ✓"
        assert known["client_info.client_id"] == CLIENT
        assert json.loads(known["labeled_counter.toolbox_tool_used"]) == [{"key": "hammer", "value": 2},
                                                                           {"key": "pliers", "value": 1}]
        assert sorted(by_id[i]["counter.toolbox_launch_count"] for i in ids["plain"]) == [0, 1, 2, 3]
        assert by_id[ids["plain"][0]]["string.toolbox_active_theme"] is None  # old rows read NULL

        events = fetch_json(f"{base}/{DATASET}/events_stream_v1.json?_shape=array&_sort=event_index")
        assert [(e["event_index"], e["name"], json.loads(e["extra"])) for e in events] == [
            (0, "tool_opened", [{"key": "tool", "value": "hammer"}]), (1, "tool_opened", [{"key": "tool", "value": "saw"}])]
        assert {e["client_id"] for e in events} == {CLIENT}

        # the view names the README's queries use read the same rows as their tables
        via_view = fetch_json(f"{base}/{DATASET}.json?_shape=array&sql="
                              + urllib.parse.quote("SELECT document_id FROM metrics ORDER BY document_id"))
        assert [r["document_id"] for r in via_view] == sorted({ids["known"], *ids["plain"]})
        per_day = fetch_json(f"{base}/{DATASET}.json?_shape=array&sql=" + urllib.parse.quote(
            "SELECT name, COUNT(*) AS n FROM events_stream GROUP BY name"))
        assert per_day == [{"name": "tool_opened", "n": 2}]

        # read-only: the files are opened immutable, and SQL that writes is refused
        dbs = {d["name"]: d for d in fetch_json(f"{base}/-/databases.json")}
        assert dbs[DATASET]["is_mutable"] is False and "_gleanpipe" in dbs
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/{DATASET}.json?sql=DELETE+FROM+metrics_v1", timeout=10)
        assert len(fetch_json(f"{base}/{DATASET}/metrics_v1.json?_shape=array")) == 5
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "from gleanpipe serve (admin API)" in out
    with pytest.raises(OSError):  # Datasette stopped with it
        urllib.request.urlopen(f"{base}/-/versions.json", timeout=2)


def test_a_killed_explore_takes_datasette_with_it(loaded):
    """SIGKILL gives explore no chance to stop Datasette; the kernel does (parent_guard.py)."""
    server, _ = loaded
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gleanpipe.cli", "explore", "--data-dir", str(server.data_dir),
                             "--port", str(port), "--no-open"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/-/versions.json", proc)
    (datasette,) = children(proc.pid)
    proc.kill()
    proc.wait()
    assert wait_gone([datasette]) == []
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/-/versions.json", timeout=2)


def host_request(port: int, method: str, path: str, host: str | None, version: str = "HTTP/1.1") -> tuple[int, bytes]:
    """(status, body) of one request to 127.0.0.1:``port`` with the Host ``host`` (None: no Host header),
    on a real socket: the Host a browser sends after a DNS rebinding is the page's own name."""
    if version == "HTTP/1.0":  # http.client speaks HTTP/1.1 only; a 1.0 answer is not chunked
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"{method} {path} HTTP/1.0\r\n".encode() + (f"Host: {host}\r\n\r\n" if host else "\r\n").encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_explores_datasette_answers_only_a_loopback_host_or_an_allowed_name(loaded):
    """DNS rebinding: a web page whose name (evil.example) came to resolve to 127.0.0.1 must not read
    the warehouse's copy through Datasette, as it must not read serve's pages (test_rebinding.py)."""
    server, ids = loaded
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gleanpipe.cli", "explore", "--data-dir", str(server.data_dir),
                             "--port", str(port), "--no-open"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "GLEANPIPE_ALLOWED_HOSTS": "gleanpipe.test,.example.test"})
    sql = f"/{DATASET}.json?_shape=array&sql=" + urllib.parse.quote("SELECT document_id FROM metrics ORDER BY 1")
    paths = ["/", f"/{DATASET}", f"/{DATASET}/metrics_v1", f"/{DATASET}.json", "/-/versions.json",
             f"/{DATASET}/metrics_v1.json?_shape=array", sql, "/-/metadata.json", "/-/static/app.css", "/no-such-db"]
    try:
        wait_http(f"http://127.0.0.1:{port}/-/versions.json", proc)
        for path in paths:
            for host in (f"evil.example:{port}", "evil.example", "localhost.evil.example", "127.0.0.1.evil.example",
                         f"192.168.1.20:{port}", "[::2]", "notexample.test", "localhost:x"):
                status, body = host_request(port, "GET", path, host)
                assert status == 403, (path, host, status, body[:200])  # not Datasette's answer, with the data
                assert json.loads(body) == host_refusal(host, EXPLORER), (path, host, body)
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "app.localhost", "127.0.0.2",
                         f"gleanpipe.test:{port}", "example.test", f"a.b.example.test:{port}"):
                status, body = host_request(port, "GET", path, host)
                assert status == (404 if path == "/no-such-db" else 200), (path, host, body[:300])
        # what the allowed Hosts were answered: the warehouse's data
        status, body = host_request(port, "GET", "/-/versions.json", f"localhost:{port}")
        assert json.loads(body)["datasette"]["version"] == "0.65.5"
        status, body = host_request(port, "GET", sql, f"gleanpipe.test:{port}")
        assert [r["document_id"] for r in json.loads(body)] == sorted([ids["known"], *ids["plain"]])
        status, body = host_request(port, "GET", f"/{DATASET}.json", f"127.0.0.1:{port}")
        assert "metrics_v1" in {t["name"] for t in json.loads(body)["tables"]}
        # whatever the method; a HEAD's refusal has no body
        assert host_request(port, "HEAD", f"/{DATASET}.json", "evil.example") == (403, b"")
        status, body = host_request(port, "POST", f"/{DATASET}.json", "evil.example")
        assert (status, json.loads(body)) == (403, host_refusal("evil.example", EXPLORER))
        # no Host: HTTP/1.1 requires one, and is refused (by uvicorn's h11 parser before Datasette, or else by the
        # check); an HTTP/1.0 request is no browser's, and is answered
        status, body = host_request(port, "GET", "/-/versions.json", None)
        assert (status, body) == (400, b"Invalid HTTP request received.") or (
            status == 403 and json.loads(body)["error_message"].startswith(
                "a request without a Host header (HTTP/1.1 requires one) is not allowed here: explore's Datasette")), body
        status, body = host_request(port, "GET", "/-/versions.json", None, "HTTP/1.0")
        assert status == 200 and json.loads(body)["datasette"]["version"] == "0.65.5"
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    bad = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "explore", "--data-dir", str(server.data_dir),
                          "--port", str(port), "--no-open"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GLEANPIPE_ALLOWED_HOSTS": "gleanpipe.test:8001"})
    assert bad.returncode == 2 and "GLEANPIPE_ALLOWED_HOSTS: 'gleanpipe.test:8001' is not a host name" in bad.stderr
    assert "exported" not in bad.stdout  # checked before the export


def test_paged_export_through_serve_reads_every_row_once(loaded, tmp_path):
    server, ids = loaded
    result = ex.export(ex.Source.from_server(server.admin), tmp_path / "out", page_rows=2)
    con = sqlite3.connect(result.databases[DATASET])
    got = sorted(r[0] for r in con.execute("SELECT document_id FROM metrics_v1"))
    assert got == sorted([ids["known"], *ids["plain"]])
    assert con.execute("SELECT document_id, event_index FROM events_stream_v1 ORDER BY 2").fetchall() == [
        (ids["known"], 0), (ids["known"], 1)]
    # 5 ping rows + 2 events + 6 rows of the derived views (daily_active_clients, events_daily, metric_daily)
    assert result.rows == 5 + 2 + 6 and result.written == ["_gleanpipe", DATASET]


def test_explore_without_serve_opens_duckdb_read_only_and_refreshes_changed_datasets(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServeProcess(data_dir).start()
    ids = send_known_pings(server, n_plain=1)
    server.stop()

    first = gleanpipe("explore", "--data-dir", str(data_dir), "--export-only")
    assert first.returncode == 0, first.stderr
    assert "exported 10 rows into 2 files" in first.stdout and "(read-only)" in first.stdout
    con = sqlite3.connect(data_dir / "explore" / f"{DATASET}.db")
    con.row_factory = sqlite3.Row
    assert_known_row(dict(con.execute("SELECT * FROM metrics_v1 WHERE document_id = ?", [ids["known"]]).fetchone()),
                     ids)
    con.close()

    again = gleanpipe("explore", "--data-dir", str(data_dir), "--export-only")
    assert "exported 0 rows into 0 files" in again.stdout
    assert f"unchanged since the last export: _gleanpipe, {DATASET}" in again.stdout

    # the read-only open left the file free: serve starts, takes a new ping, and the next run sees it
    server = ServeProcess(data_dir).start()
    try:
        extra = str(uuid.uuid4())
        assert post(server.url + submit_path("metrics", extra), gz(make_ping()))[0] == 200
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1", 3) == 3
    finally:
        server.stop()
    third = gleanpipe("explore", "--data-dir", str(data_dir), "--export-only")
    assert "exported 11 rows into 1 file in" in third.stdout and "unchanged since the last export: _gleanpipe" \
        in third.stdout
    con = sqlite3.connect(data_dir / "explore" / f"{DATASET}.db")
    assert con.execute("SELECT count(*) FROM metrics_v1 WHERE document_id = ?", [extra]).fetchone()[0] == 1
    con.close()

    # --force writes every dataset again, even unchanged ones; --out puts the files elsewhere
    forced = gleanpipe("explore", "--data-dir", str(data_dir), "--export-only", "--force")
    assert "exported 11 rows into 2 files" in forced.stdout and "unchanged" not in forced.stdout
    out = tmp_path / "elsewhere"
    moved = gleanpipe("explore", "--data-dir", str(data_dir), "--export-only", "--out", str(out))
    assert "exported 11 rows into 2 files" in moved.stdout
    con = sqlite3.connect(out / f"{DATASET}.db")
    assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 3


def test_keyset_pages_keep_rows_whose_document_id_is_null(tmp_path):
    """The paging used through serve, run on a DuckDB file behind the same query interface."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA _gleanpipe; CREATE TABLE _gleanpipe.errors (object_key VARCHAR, document_id VARCHAR, "
                "error_type VARCHAR)")
    con.execute("INSERT INTO _gleanpipe.errors VALUES ('raw/a', NULL, 'key'), ('raw/b', 'd-1', 'transform'), "
                "('raw/c', NULL, 'key'), ('raw/d', 'd-2', 'transform'), ('raw/e', NULL, 'key')")

    # Stands in for serve's AdminClient, which has this one method: a running serve owns its own
    # warehouse, and NULL document_ids in _gleanpipe.errors cannot be made through submit and load.
    class DuckDBQuery:
        def query(self, sql, params=None):
            cur = con.execute(sql, params or [])
            return [d[0] for d in cur.description], cur.fetchall()

    result = ex.export(ex.Source.from_server(DuckDBQuery()), tmp_path / "out", page_rows=2)
    con.close()
    out = sqlite3.connect(result.databases["_gleanpipe"])
    assert out.execute("SELECT object_key, document_id FROM errors ORDER BY 1").fetchall() == [
        ("raw/a", None), ("raw/b", "d-1"), ("raw/c", None), ("raw/d", "d-2"), ("raw/e", None)]


def test_column_types_map_to_sqlite_values(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA app; CREATE TABLE app.t (document_id VARCHAR, ok BOOLEAN, n BIGINT, x DOUBLE, "
                "d DECIMAL(10, 2), day DATE, ts TIMESTAMPTZ, u UUID, m MAP(VARCHAR, INTEGER), l INTEGER[], "
                "j JSON, s STRUCT(a VARCHAR, b STRUCT(c INTEGER)))")
    con.execute("INSERT INTO app.t VALUES ('doc-1', true, 9007199254740993, 1.5, 12.34, DATE '2026-11-23', "
                "TIMESTAMPTZ '2026-11-23 08:00:00.25+00', '5f0e6a2c-1b3d-4c5e-8f70-9a1b2c3d4e5f', "
                "MAP {'k': 1}, [1, 2], '{\"z\": [1]}', {'a': 'x\"y', 'b': {'c': 3}})")
    con.execute("CREATE VIEW app.v AS SELECT document_id, n FROM app.t")
    result = ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out")
    con.close()
    out = sqlite3.connect(result.databases["app"])
    row = out.execute("SELECT * FROM t").fetchone()
    assert row[:8] == ("doc-1", 1, 9007199254740993, 1.5, 12.34, "2026-11-23", "2026-11-23T08:00:00.250000Z",
                       "5f0e6a2c-1b3d-4c5e-8f70-9a1b2c3d4e5f")
    assert json.loads(row[8]) == {"k": 1} and json.loads(row[9]) == [1, 2] and json.loads(row[10]) == {"z": [1]}
    assert json.loads(row[11]) == {"a": 'x"y', "b": {"c": 3}}
    assert out.execute("SELECT * FROM v").fetchall() == [("doc-1", 9007199254740993)]  # views are exported too
    assert [r[1] for r in out.execute("PRAGMA table_info(t)")] == [
        "document_id", "ok", "n", "x", "d", "day", "ts", "u", "m", "l", "j", "s"]


def test_explore_says_what_is_wrong(tmp_path):
    missing = gleanpipe("explore", "--data-dir", str(tmp_path / "nothing"), "--export-only")
    assert missing.returncode != 0 and "no warehouse at" in missing.stderr
    other = gleanpipe("explore", "--data-dir", str(tmp_path), "--warehouse-url", "bigquery://some-project/US",
                      "--export-only")  # well-formed: "bigquery://p/l" is now refused as a bad URL (exit 2)
    assert other.returncode != 0 and "explore works on a duckdb:// warehouse" in other.stderr
    bad_port = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "explore", "--data-dir", str(tmp_path)],
                              capture_output=True, text=True, env={**__import__("os").environ,
                                                                   "GLEANPIPE_EXPLORE_PORT": "eighty"})
    assert bad_port.returncode == 2 and "'--port' (GLEANPIPE_EXPLORE_PORT): 'eighty' is not a valid integer" in bad_port.stderr
    zero = gleanpipe("explore", "--data-dir", str(tmp_path), "--port", "0")
    assert zero.returncode == 2 and "0 is not in the range 1<=x<=65535" in zero.stderr


def test_ping_and_app_names_a_sender_picks_cannot_break_or_hide_the_export(tmp_path):
    """Found by sending hostile names. Before: ping `baseline-v1-flat` (view baseline_v1_flat, the
    name of baseline_v1's flat view) made every export fail with a traceback; app
    `gleanpipe-internal` shared its file with gleanpipe's load errors and deletions, which came
    and went from run to run; ping `events-daily` hid the app's derived view events_daily."""
    from gleanpipe.load import Loader
    from gleanpipe.storage.local import LocalStore
    from gleanpipe.warehouse import open_warehouse
    from test_load import put_ping

    store = LocalStore(tmp_path / "store")
    wh = open_warehouse(f"duckdb://{tmp_path / 'w.duckdb'}")
    try:
        keys = [put_ping(store, make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 3}})),
                put_ping(store, make_ping(CLIENT), doc_type="baseline-v1-flat"),
                put_ping(store, make_ping(CLIENT, events=EVENTS), doc_type="events-daily")]
        path = DocumentPath("gleanpipe-internal", "baseline", "1", str(uuid.uuid4()))
        meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "headers": {}, "app_id": path.app_id,
                "doc_type": "baseline", "version": "1", "document_id": path.document_id, "key": path.key}
        store.put_new(path.key, rawobject.encode(meta, json.dumps(make_ping(CLIENT)).encode()))
        keys.append(path.key)
        keys.append(put_ping(store, {"client_info": "not an object"}))  # one load error for _gleanpipe.errors
        assert Loader(store, wh).load_keys(keys).inserted == 4
    finally:
        wh.close()
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    result = ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out")
    con.close()
    assert sorted(result.databases) == ["_gleanpipe", "gleanpipe_internal", DATASET]
    meta_db = sqlite3.connect(result.databases["_gleanpipe"])
    assert meta_db.execute("SELECT count(*) FROM errors").fetchone() == (1,)
    app_db = sqlite3.connect(result.databases["gleanpipe_internal"])
    assert app_db.execute("SELECT count(*) FROM baseline").fetchone() == (1,)
    out = sqlite3.connect(result.databases[DATASET])
    flat = [r[1] for r in out.execute("PRAGMA table_info(baseline_v1_flat)")]
    assert "counter.toolbox_launch_count" in flat  # the flat view of baseline_v1 kept its name
    assert out.execute("SELECT count(*) FROM baseline_v1_flat_v1").fetchone() == (1,)  # the ping's rows are there
    assert out.execute("SELECT category, name, events FROM events_daily ORDER BY name").fetchall() == [
        ("toolbox", "tool_opened", 2)]


def test_a_refresh_writes_a_deleted_file_again_and_removes_the_file_of_a_dropped_schema(tmp_path):
    """The refresh skips a dataset only when its file is still there and unchanged; the file of a
    schema gone from the warehouse is removed, so Datasette does not keep serving stale rows."""
    path = str(tmp_path / "w.duckdb")
    con = duckdb.connect(path)
    con.execute("CREATE SCHEMA app_a; CREATE TABLE app_a.t (document_id VARCHAR, n BIGINT); "
                "INSERT INTO app_a.t VALUES ('d-1', 1)")
    con.execute("CREATE SCHEMA app_b; CREATE TABLE app_b.t (document_id VARCHAR, n BIGINT); "
                "INSERT INTO app_b.t VALUES ('d-2', 2)")
    out = tmp_path / "out"
    first = ex.export(ex.Source.from_duckdb(con, "w"), out)
    assert first.written == ["app_a", "app_b"] and first.unchanged == []

    (out / "app_a.db").unlink()  # removed by hand: the next run must write it again, unchanged or not
    con.execute("DROP SCHEMA app_b CASCADE")
    second = ex.export(ex.Source.from_duckdb(con, "w"), out)
    con.close()
    assert (second.written, second.unchanged) == (["app_a"], [])
    assert sqlite3.connect(out / "app_a.db").execute("SELECT document_id, n FROM t").fetchall() == [("d-1", 1)]
    assert not (out / "app_b.db").exists()
    assert sorted(json.loads((out / ex.MANIFEST).read_text())["databases"]) == ["app_a"]


def test_a_flat_view_has_one_column_per_field_and_metric_and_no_metadata(tmp_path):
    """<table>_flat: the plain columns, client_info.* and ping_info.* fields, and one column per
    metric; the metadata STRUCT (the HTTP headers) stays in the table only."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA app; CREATE TABLE app.metrics_v1 (document_id VARCHAR, "
                "client_info STRUCT(client_id VARCHAR, os VARCHAR), ping_info STRUCT(seq BIGINT), "
                "metadata STRUCT(app_id VARCHAR), "
                "metrics STRUCT(counter STRUCT(a_b BIGINT), labeled_counter STRUCT(c_d STRUCT(\"key\" VARCHAR, "
                "\"value\" BIGINT)[])))")
    con.execute("INSERT INTO app.metrics_v1 VALUES ('d-1', {'client_id': 'c', 'os': 'Linux'}, {'seq': 4}, "
                "{'app_id': 'x'}, {'counter': {'a_b': 5}, 'labeled_counter': {'c_d': [{'key': 'k', 'value': 2}]}})")
    result = ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out")
    con.close()
    out = sqlite3.connect(result.databases["app"])
    cols = [r[1] for r in out.execute("PRAGMA table_info(metrics_v1_flat)")]
    assert cols == ["document_id", "client_info.client_id", "client_info.os", "ping_info.seq",
                    "counter.a_b", "labeled_counter.c_d"]
    row = out.execute("SELECT * FROM metrics_v1_flat").fetchone()
    assert row[:5] == ("d-1", "c", "Linux", 4, 5) and json.loads(row[5]) == [{"key": "k", "value": 2}]


def test_a_refresh_writes_a_dataset_again_when_only_a_column_type_changed(tmp_path):
    """`gleanpipe apps add` widens a table's metrics STRUCT without adding rows: the rows and the
    column names are the same, the fingerprint's column types are not, so the dataset is written
    again and its flat view gets the new metric's column."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA app; CREATE TABLE app.metrics_v1 (document_id VARCHAR, "
                "metrics STRUCT(counter STRUCT(a_b BIGINT)))")
    con.execute("INSERT INTO app.metrics_v1 VALUES ('d-1', {'counter': {'a_b': 5}})")
    first = ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out")
    assert (first.written, first.unchanged) == (["app"], [])
    con.execute("ALTER TABLE app.metrics_v1 ADD COLUMN metrics.counter.e_f BIGINT")
    second = ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out")
    con.close()
    assert (second.written, second.unchanged, second.rows) == (["app"], [], 1)
    out = sqlite3.connect(second.databases["app"])
    try:
        assert [r[1] for r in out.execute("PRAGMA table_info(metrics_v1_flat)")] == [
            "document_id", "counter.a_b", "counter.e_f"]
        assert out.execute("SELECT * FROM metrics_v1_flat").fetchall() == [("d-1", 5, None)]
    finally:
        out.close()


def test_timestamps_inside_nested_columns_are_iso_utc_text_as_the_top_level_ones(tmp_path):
    """to_json writes a TIMESTAMPTZ as "2026-11-23 08:00:00+00": ping_info.parsed_start_time in a
    _flat view did not compare as text with submission_timestamp ("2026-11-23T08:00:00.000000Z")."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("SET TimeZone = 'Europe/Berlin'")  # the export's text is UTC whatever the session's zone
    con.execute("CREATE SCHEMA app; CREATE TABLE app.metrics_v1 (document_id VARCHAR, submission_timestamp TIMESTAMPTZ, "
                "ping_info STRUCT(seq BIGINT, parsed_start_time TIMESTAMPTZ), "
                "metrics STRUCT(counter STRUCT(a_b BIGINT)), "
                "notes STRUCT(\"at\" TIMESTAMPTZ, \"when\" TIMESTAMPTZ[])[])")
    con.execute("INSERT INTO app.metrics_v1 VALUES ('d-1', '2026-11-23 09:00:00.25+01', "
                "{'seq': 4, 'parsed_start_time': '2026-11-23 08:59:00+01'}, {'counter': {'a_b': 5}}, "
                "[{'at': '2026-11-23 08:00:00Z', 'when': ['2026-11-24 00:30:00+02', NULL]}, NULL]), "
                "('d-2', NULL, NULL, NULL, NULL)")
    result = ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out")
    con.close()
    out = sqlite3.connect(result.databases["app"])
    rows = out.execute('SELECT submission_timestamp, "ping_info.parsed_start_time", "counter.a_b" '
                       "FROM metrics_v1_flat ORDER BY document_id").fetchall()
    assert rows == [("2026-11-23T08:00:00.250000Z", "2026-11-23T07:59:00.000000Z", 5), (None, None, None)]
    notes = [r[0] for r in out.execute("SELECT notes FROM metrics_v1 ORDER BY document_id")]
    assert json.loads(notes[0]) == [{"at": "2026-11-23T08:00:00.000000Z",
                                     "when": ["2026-11-23T22:30:00.000000Z", None]}, None]
    assert notes[1] is None
    out.close()
    # an export from before this format is written again, though the rows did not change
    manifest = tmp_path / "out" / ex.MANIFEST
    assert json.loads(manifest.read_text())["format"] == ex.EXPORT_FORMAT
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    try:
        assert ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out").written == []  # the same rows
        old = json.loads(manifest.read_text())
        del old["format"]
        manifest.write_text(json.dumps(old))
        assert ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out").written == ["app"]
    finally:
        con.close()


def test_export_through_serve_takes_smaller_pages_when_a_page_is_over_GLEANPIPE_QUERY_MAX_BYTES(tmp_path):
    """serve refuses an answer over GLEANPIPE_QUERY_MAX_BYTES; explore's pages of 20,000 rows of
    big pings can be over it, so explore halves the page until it fits. The export through a
    serve with a small limit has every row, as the export of the file itself (no limit) has."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    limit = 12_000
    server = ServeProcess(data_dir, env={"GLEANPIPE_QUERY_MAX_BYTES": str(limit)}).start()
    try:
        ids = send_known_pings(server, n_plain=20)
        # what makes this test: one page of the whole table is over the limit, one row is not
        with pytest.raises(ServeError, match="GLEANPIPE_QUERY_MAX_BYTES"):
            server.admin.query(f"SELECT * FROM {DATASET}.metrics_v1")
        assert len(server.admin.query(f"SELECT * FROM {DATASET}.metrics_v1 LIMIT 1")[1]) == 1
        through_serve = ex.export(ex.Source.from_server(server.admin), tmp_path / "served")
    finally:
        assert server.stop() == 0
    direct = gleanpipe("explore", "--data-dir", str(data_dir), "--export-only", "--out", str(tmp_path / "file"))
    assert direct.returncode == 0, direct.stderr

    def table(db: Path, name: str) -> list[tuple]:
        con = sqlite3.connect(db)
        try:
            return con.execute(f"SELECT * FROM {name} ORDER BY document_id").fetchall()
        finally:
            con.close()

    served = table(through_serve.databases[DATASET], "metrics_v1")
    assert sorted(r[1] for r in served) == sorted([ids["known"], *ids["plain"]])
    assert served == table(tmp_path / "file" / f"{DATASET}.db", "metrics_v1")


def test_an_export_over_serves_limit_names_the_view_and_says_what_to_do(tmp_path):
    """Before: "export failed: the result is over N bytes as JSON, the most serve answers
    (GLEANPIPE_QUERY_MAX_BYTES): add a LIMIT or select fewer columns": serve's advice to a query's
    author, which explore's user cannot follow, and no table or view named. A real serve with a
    small limit: one metrics row fits, its 150 labels make metric_daily (one answer) too large; at a
    smaller limit the list of columns explore reads first is too large."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    advice = ("the running serve answers (GLEANPIPE_QUERY_MAX_BYTES): restart serve with a higher "
              "GLEANPIPE_QUERY_MAX_BYTES, or stop serve and run explore again (it then reads the DuckDB file itself, "
              "with no such limit)\n")
    explore = ["explore", "--export-only", "--force", "--data-dir", str(data_dir)]
    server = ServeProcess(data_dir, env={"GLEANPIPE_QUERY_MAX_BYTES": "10000"}).start()
    try:
        doc = make_ping(metrics={"labeled_counter": {"toolbox.tool_used": {f"tool_{i}": i for i in range(150)}}})
        assert post(server.url + submit_path("metrics"), gz(doc))[0] == 200
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1", 1) == 1
        out = gleanpipe(*explore)
    finally:
        assert server.stop() == 0
    assert (out.returncode, out.stderr) == (
        1, f"Error: export failed: the view {DATASET}.metric_daily is over 10000 bytes as JSON, the most {advice}")
    server = ServeProcess(data_dir, env={"GLEANPIPE_QUERY_MAX_BYTES": "3000"}).start()
    try:
        out = gleanpipe(*explore)
    finally:
        assert server.stop() == 0
    assert (out.returncode, out.stderr) == (
        1, "Error: export failed: the list of the warehouse's tables, views and columns is over 3000 bytes as JSON, "
           f"the most {advice}")
    direct = gleanpipe(*explore)  # the advice holds: with serve stopped, no limit
    assert direct.returncode == 0, direct.stderr
    con = sqlite3.connect(data_dir / "explore" / f"{DATASET}.db")
    try:
        assert con.execute("SELECT count(*) FROM metric_daily").fetchone() == (150,)
    finally:
        con.close()


class _TooLarge:
    """A serve that refuses every page over 0 rows as over GLEANPIPE_QUERY_MAX_BYTES (one row is
    too big) and answers LIMIT 0, which fits; it notes the LIMIT of each request."""

    def __init__(self, error=None):
        self.sizes, self.error = [], error

    def query(self, sql, params=None):
        from gleanpipe.admin import ResultTooLarge

        self.sizes.append(size := int(sql.rsplit("LIMIT", 1)[1]))
        if self.error is not None:
            raise self.error
        if size == 0:
            return ["document_id"], []
        raise ResultTooLarge("the result is over 10 bytes as JSON")


def test_a_single_row_over_serves_limit_fails_the_export_and_pages_are_halved_not_shrunk_by_one():
    """explore halves a page serve refuses (8, 4, 2, 1 rows); a row that is over the limit on its
    own is the limit's error, never a LIMIT 0 that serve answers with no rows, which would end the
    table's export early and silently. Any other serve error is not retried with smaller pages."""
    from gleanpipe.admin import ResultTooLarge, ServeError

    rel = ex.Relation("app", "metrics_v1", False, [ex.Column("document_id", "VARCHAR")])
    client = _TooLarge()
    with pytest.raises(ResultTooLarge) as info:
        list(ex.Source.from_server(client).batches(rel, "document_id", 8))
    assert client.sizes == [8, 4, 2, 1]
    # named as one row of the table, with explore's advice (not serve's own, a LIMIT: no use here)
    assert str(info.value) == (
        "a row of the table app.metrics_v1 is over 10 bytes as JSON, the most the running serve answers "
        "(GLEANPIPE_QUERY_MAX_BYTES): restart serve with a higher GLEANPIPE_QUERY_MAX_BYTES, or stop serve and run "
        "explore again (it then reads the DuckDB file itself, with no such limit)")
    broken = _TooLarge(ServeError("cannot reach gleanpipe serve"))
    with pytest.raises(ServeError, match="cannot reach"):
        list(ex.Source.from_server(broken).batches(rel, "document_id", 8))
    assert broken.sizes == [8]


def test_one_export_at_a_time_into_a_folder_and_a_stopped_ones_temp_file_goes(tmp_path):
    """Two exports into one --out removed each other's <schema>.db.tmp, and one renamed the other's
    half-written file into place under a manifest that called it whole: a corrupt SQLite file that
    later exports kept as "unchanged". The second export now says another one is running; the
    temp file of an export that was stopped is removed by the next one."""
    import fcntl

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA app; CREATE TABLE app.metrics_v1 (document_id VARCHAR); "
                "INSERT INTO app.metrics_v1 VALUES ('d-1')")
    con.close()
    out = tmp_path / "out"
    out.mkdir()
    (out / "app.db.tmp").write_bytes(b"half of a stopped export")
    holder = os.open(out / ex.LOCK, os.O_RDWR | os.O_CREAT)  # an export running in another process
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        busy = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "explore", "--export-only", "--out", str(out),
                               "--warehouse-url", f"duckdb://{tmp_path / 'w.duckdb'}", "--data-dir", str(tmp_path / "d")],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.close(holder)
    assert busy.returncode == 1
    assert busy.stderr.strip() == (f"Error: export failed: another `gleanpipe explore` is exporting into {out}: "
                                   "wait for it to end, or give another --out")
    assert (out / "app.db.tmp").exists() and not (out / "app.db").exists()  # it touched nothing
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        result = ex.export(ex.Source.from_duckdb(con, "w"), out)
    finally:
        con.close()
    assert result.written == ["app"] and not (out / "app.db.tmp").exists()
    assert sqlite3.connect(out / "app.db").execute("SELECT document_id FROM metrics_v1").fetchall() == [("d-1",)]


def test_ctrl_c_stops_an_export_from_the_file_whenever_it_comes(tmp_path):
    """With serve stopped, explore reads the DuckDB file itself, and a view can take long (the
    warehouse's own views read every ping table). DuckDB looks for Ctrl-C only between pieces of
    work: a Ctrl-C in the middle of such a view went unnoticed until it ended. The export runs
    beside the thread that waits for Ctrl-C now, which interrupts its read."""
    path = str(tmp_path / "w.duckdb")
    con = duckdb.connect(path)
    con.execute("CREATE SCHEMA app; CREATE TABLE app.metrics_v1 (document_id VARCHAR); "
                "INSERT INTO app.metrics_v1 VALUES ('d-1'); CREATE VIEW app.slow AS "
                "SELECT count(*) AS n FROM range(1000000000000) AS a, range(10) AS b")
    con.close()
    out = tmp_path / "out"
    for delay in (0.0, 0.5, 2.0):
        proc = ctrl_c_when_open(["explore", "--export-only", "--out", str(out), "--warehouse-url", f"duckdb://{path}",
                                 "--data-dir", str(tmp_path / "d")], path, delay)
        assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "interrupted\n"), delay
    con = duckdb.connect(path)  # the file was let go: this process may write to it
    try:
        con.execute("DROP VIEW app.slow")
    finally:
        con.close()
    con = duckdb.connect(path, read_only=True)
    try:  # and the folder's lock too: the next export runs, and takes the place of a stopped one's file
        result = ex.export(ex.Source.from_duckdb(con, "w"), out)
    finally:
        con.close()
    assert result.written == ["app"] and list(out.glob("*.tmp")) == []
    assert sqlite3.connect(out / "app.db").execute("SELECT document_id FROM metrics_v1").fetchall() == [("d-1",)]


def test_a_table_of_the_users_own_with_a_name_explore_cannot_quote_is_left_out_and_named(tmp_path):
    """A table or column the user made in the DuckDB file with a space or a quote in its name
    (`CREATE TABLE main."my notes"`) stopped the whole export with UnsafeIdentifier; now the others
    are exported, and the summary names what was left out."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA app; CREATE TABLE app.baseline_v1 (document_id VARCHAR, n BIGINT); "
                "INSERT INTO app.baseline_v1 VALUES ('d-1', 1)")
    con.execute('CREATE TABLE main."my notes" (x INTEGER); CREATE TABLE app.mine ("odd ""col""" INTEGER); '
                'CREATE TABLE app.nested (s STRUCT("a b" TIMESTAMPTZ)); CREATE TABLE app.fine (y INTEGER)')
    result = ex.export(ex.Source.from_duckdb(con, "w"), tmp_path / "out")
    con.close()
    assert result.skipped == ["app.mine", "app.nested", 'main.my notes']
    assert result.written == ["app"] and result.rows == 1
    out = sqlite3.connect(result.databases["app"])
    assert sorted(r[0] for r in out.execute("SELECT name FROM sqlite_master WHERE type = 'table'")) == [
        "baseline_v1", "fine"]
    assert out.execute("SELECT document_id, n FROM baseline_v1").fetchall() == [("d-1", 1)]
    assert result.summary().endswith("; not exported, for names other than letters, digits and _ in them or their "
                                     "columns: app.mine, app.nested, main.my notes")
