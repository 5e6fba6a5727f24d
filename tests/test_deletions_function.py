"""The `deletions` function (functions/main.py): what Cloud Scheduler calls to retry pending
deletion requests, the same code as `gleanpipe deletions`.

Run through functions-framework's test client on a real DuckDB file and on bqemulator. The
streaming-buffer refusal is injected as in test_bigquery.py (bqemulator never refuses DML on
just-streamed rows); the locked DuckDB file is a real second process holding it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import duckdb
import orjson
import pytest
from functions_framework import create_app

from gleanpipe import functions as gp_functions
from gleanpipe.load import Loader
from gleanpipe.storage.local import LocalStore
from gleanpipe.warehouse import open_warehouse

from conftest import DATASET, ROOT, free_port, make_ping
from test_bigquery import refuse_deletes_in_streaming_buffer
from test_load import CLIENT_A, CLIENT_B, EVENTS, put_ping


@pytest.fixture
def deletions_fn(fn_env):
    """A test client of the `deletions` target, with the function's cached warehouse closed after."""
    gp_functions.deletions_warehouse.cache_clear()
    client = create_app(target="deletions", source=str(ROOT / "functions" / "main.py"),
                        signature_type="http").test_client()
    yield client
    if gp_functions.deletions_warehouse.cache_info().currsize:
        gp_functions.deletions_warehouse().close()
    gp_functions.deletions_warehouse.cache_clear()


def call(client, method="POST"):
    resp = client.open("/", method=method)
    return resp.status_code, orjson.loads(resp.data), resp.headers["Content-Type"]


def record_pending(path, client_id: str, document_id: str, dataset: str = DATASET) -> None:
    """A pending request as BigQuery's loader records it (its MERGE: not executed, no attempt yet).
    DuckDB carries a deletion out inside the load, so it never leaves one pending itself."""
    con = duckdb.connect(str(path))
    try:
        con.execute("INSERT INTO _gleanpipe.deletions (dataset, client_id, document_id, requested_at, recorded_at, "
                    "rows_deleted, attempts) VALUES (?, ?, ?, now(), now(), 0, 0)", [dataset, client_id, document_id])
    finally:
        con.close()


@pytest.fixture
def duckdb_with_a_pending_deletion(fn_env):
    """Pings of two clients (one with events) in a real DuckDB file, and a pending deletion of the first."""
    path = fn_env / "warehouse.duckdb"
    store = LocalStore(fn_env / "store")
    wh = open_warehouse(f"duckdb://{path}")
    try:
        Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A, events=EVENTS)),
                                     put_ping(store, make_ping(CLIENT_A, seq=1)),
                                     put_ping(store, make_ping(CLIENT_B))])
    finally:
        wh.close()
    record_pending(path, CLIENT_A, "5e1d0c2a-0000-4000-8000-00000000d0c1")
    return path


def rows(path, sql):
    wh = open_warehouse(f"duckdb://{path}", read_only=True)
    try:
        return wh.query(sql)[1]
    finally:
        wh.close()


def test_a_pending_deletion_is_carried_out_and_the_answer_summarises_it(deletions_fn, duckdb_with_a_pending_deletion):
    path = duckdb_with_a_pending_deletion
    status, body, content_type = call(deletions_fn)
    assert (status, content_type) == (200, "application/json")
    assert body == {"warehouse": f"duckdb://{path}", "carried_out": 1, "still_pending": 0, "rows_deleted": 4,
                    "requests": [{"dataset": DATASET, "document_id": "5e1d0c2a-0000-4000-8000-00000000d0c1",
                                  "done": True, "rows_deleted": 4, "error": None}]}
    assert CLIENT_A not in orjson.dumps(body).decode()  # the client being forgotten is not echoed
    # the README names the summary's fields as it has them (it said "outcome" for `done`)
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = readme.split("It answers 200 with a JSON summary (", 1)[1].split("; client ids are left out)", 1)[0]
    top, per_request = said.split(": per request its", 1)
    assert (re.findall(r"`(\w+)`", top), re.findall(r"`(\w+)`", per_request)) == (
        list(body), list(body["requests"][0])), said
    # 2 baseline rows and 2 events_stream rows of client A are gone; client B is untouched.
    assert rows(path, f"SELECT client_info.client_id FROM {DATASET}.baseline_v1") == [(CLIENT_B,)]
    assert rows(path, f"SELECT count(*) FROM {DATASET}.events_stream_v1") == [(0,)]
    assert rows(path, "SELECT executed_at IS NOT NULL, rows_deleted, attempts, last_error "
                      "FROM _gleanpipe.deletions") == [(True, 4, 1, None)]
    # The next scheduled run finds nothing to do.
    assert call(deletions_fn)[:2] == (200, {"warehouse": f"duckdb://{path}", "carried_out": 0, "still_pending": 0,
                                            "rows_deleted": 0, "requests": []})



def test_pending_deletions_of_two_apps_with_one_document_id_each_update_their_own_record(tmp_path):
    """retry_deletions carries out each pending request and updates its record, found by dataset
    and document id: a request of another app with the same document id is another record, with
    its own rows deleted and its own attempt. Before this test, an update by document id alone
    passed every test (notes/mut26.tsv D21)."""
    other, other_dataset = "org-example-other", "org_example_other"
    document_id = "5e1d0c2a-0000-4000-8000-00000000d0c2"
    path = tmp_path / "warehouse.duckdb"
    store = LocalStore(tmp_path / "store")
    wh = open_warehouse(f"duckdb://{path}")
    try:
        Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_A, seq=1)),
                                     put_ping(store, make_ping(CLIENT_A), app=other),
                                     put_ping(store, make_ping(CLIENT_B), app=other)])
    finally:
        wh.close()
    record_pending(path, CLIENT_A, document_id)
    record_pending(path, CLIENT_A, document_id, dataset=other_dataset)
    wh = open_warehouse(f"duckdb://{path}")
    try:
        done = wh.retry_deletions()
        assert sorted((a.dataset, a.document_id, a.done, a.rows_deleted) for a in done) == [
            (other_dataset, document_id, True, 1), (DATASET, document_id, True, 2)]
        assert sorted(wh.query("SELECT dataset, rows_deleted, attempts, executed_at IS NOT NULL "
                               "FROM _gleanpipe.deletions")[1]) == [(other_dataset, 1, 1, True), (DATASET, 2, 1, True)]
        assert wh.query(f"SELECT client_info.client_id FROM {other_dataset}.baseline_v1")[1] == [(CLIENT_B,)]
        assert wh.query(f"SELECT count(*) FROM {DATASET}.baseline_v1")[1] == [(0,)]
    finally:
        wh.close()


def test_only_post_is_accepted(deletions_fn, duckdb_with_a_pending_deletion):
    for method in ("GET", "PUT", "DELETE"):
        assert call(deletions_fn, method)[:2] == (405, {"error_type": "method", "error_message": "use POST"})
    # nothing was attempted
    assert rows(duckdb_with_a_pending_deletion, "SELECT executed_at, attempts FROM _gleanpipe.deletions") == [(None, 0)]


def test_a_locked_warehouse_answers_503_and_the_request_stays_pending(deletions_fn, duckdb_with_a_pending_deletion):
    path = duckdb_with_a_pending_deletion
    # A second process holds the DuckDB file as its writer (as `serve` would): a real lock.
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); sys.stdin.read()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        status, body, _ = call(deletions_fn)
        assert status == 503  # Cloud Scheduler retries the run
        assert body["error_type"] == "warehouse_unavailable" and str(path) in body["error_message"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert rows(path, "SELECT executed_at, attempts FROM _gleanpipe.deletions") == [(None, 0)]
    status, body, _ = call(deletions_fn)  # the retry, once the file is free
    assert (status, body["carried_out"], body["still_pending"], body["rows_deleted"]) == (200, 1, 0, 4)
    # The function does not keep the file: another process can open it as its writer right after the
    # call (in this process DuckDB would share its open instance, so that could not fail).
    other = subprocess.run([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                            "print(c.execute('SELECT count(*) FROM _gleanpipe.deletions').fetchone()[0])", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert (other.returncode, other.stdout.strip()) == (0, "1"), other.stderr


def test_bigquery_out_of_reach_answers_503(deletions_fn, monkeypatch):
    monkeypatch.setenv("GLEANPIPE_WAREHOUSE_URL", "bigquery://nobody-here/US")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_RETRY_S", "1")
    status, body, _ = call(deletions_fn)
    assert status == 503 and body["error_type"] == "warehouse_unavailable"
    assert body["error_message"].startswith("BigQuery: ")


def test_on_bigquery_a_refused_deletion_stays_pending_until_a_later_run_carries_it_out(
        deletions_fn, fn_env, bq_emulator, bq_warehouse_url, monkeypatch):
    """The scheduled run on the BigQuery emulator: the first run meets the streaming buffer
    (injected) and leaves the request pending; the next run, after the settle time, carries it out."""
    monkeypatch.setenv("GLEANPIPE_WAREHOUSE_URL", bq_warehouse_url)  # fn_env cleared GLEANPIPE_*: set again
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", bq_emulator.endpoint)
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_RETRY_S", "10")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "1")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "1")
    wh = gp_functions.deletions_warehouse()  # the function's own warehouse, so the refusal reaches it
    store = LocalStore(fn_env / "store")
    loader = Loader(store, wh)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A, events=EVENTS)), put_ping(store, make_ping(CLIENT_B))])
    undo = refuse_deletes_in_streaming_buffer(wh)
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    doc = deletion.rsplit("/", 1)[1][:-5]
    assert loader.load_keys([deletion]).deletions == 1  # recorded, refused at once: pending

    status, body, _ = call(deletions_fn)
    assert (status, body["carried_out"], body["still_pending"], body["rows_deleted"]) == (200, 0, 1, 0)
    [request] = body["requests"]
    assert (request["dataset"], request["document_id"], request["done"]) == (DATASET, doc, False)
    assert "streaming buffer" in request["error"]
    query = lambda sql: wh.query(sql)[1]
    assert query(f"SELECT count(*) FROM {DATASET}.baseline WHERE client_info.client_id = '{CLIENT_A}'") == [(1,)]

    undo()  # the buffer is flushed
    time.sleep(1.1)  # GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S
    status, body, _ = call(deletions_fn)
    assert (status, body["carried_out"], body["still_pending"], body["rows_deleted"]) == (200, 1, 0, 3)
    assert body["requests"] == [{"dataset": DATASET, "document_id": doc, "done": True, "rows_deleted": 3,
                                 "error": None}]
    assert query(f"SELECT client_info.client_id FROM {DATASET}.baseline") == [(CLIENT_B,)]
    assert query(f"SELECT count(*) FROM {DATASET}.events_stream") == [(0,)]
    assert query("SELECT executed_at IS NOT NULL, attempts, last_error FROM _gleanpipe.deletions") == [
        (True, 3, None)]


@pytest.mark.parametrize("name,value", [("GLEANPIPE_WAREHOUSE_URL", "ftp://nowhere"),
                                        ("GLEANPIPE_LOAD_BATCH", "abc")])
def test_a_bad_setting_answers_503_misconfigured_not_a_500_traceback(deletions_fn, monkeypatch, caplog, name, value):
    """Before: Config.from_env() and open_warehouse ran outside the function's error handling, so
    a bad setting was functions-framework's 500 page with a traceback; submit and load already
    answered it with a 503 (retry once fixed) and one log line."""
    monkeypatch.setenv(name, value)
    status, body, ctype = call(deletions_fn)
    assert (status, body, ctype) == (503, {"error_type": "misconfigured", "error_message": "the server cannot run "
                                           "deletions now (see its log), retry later"}, "application/json")
    [logged] = [r.getMessage() for r in caplog.records if r.name == "gleanpipe.functions"]
    assert logged.startswith("deletions cannot run until its settings are fixed: ") and value in logged, logged
