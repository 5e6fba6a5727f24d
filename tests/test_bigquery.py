"""BigQuery-only behaviour: pending deletions and `gleanpipe deletions`, refused rows, settings.

bqemulator allows DML on rows that were just streamed and never refuses a streamed row for its
values (it answers 500), where real BigQuery refuses both. Those refusals are injected into the
real client's calls below, each with BigQuery's own error shape, and say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import orjson
import pytest
from google.api_core.exceptions import BadRequest

from gleanpipe.serve_state import take_serve_lock, write_state
from gleanpipe.load import Loader
from gleanpipe.warehouse import WarehouseUnavailable, open_warehouse
from gleanpipe.table_schema import PING_COLUMNS, metrics_struct
from gleanpipe.warehouse.bigquery import MAX_INSERT_BYTES, MAX_INSERT_ROWS, BigQueryWarehouse, parse_url, schema_of

from conftest import DATASET, make_ping
from test_load import CLIENT_A, CLIENT_B, EVENTS, put_ping

# The message BigQuery gives for DML over rows still in the streaming buffer.
STREAMING_BUFFER_ERROR = ("UPDATE or DELETE statement over table {table} would affect rows in the streaming buffer, "
                          "which is not supported")


@pytest.fixture
def bq(bq_warehouse_url, monkeypatch):
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_RETRY_S", "10")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "1")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "1")
    wh = open_warehouse(bq_warehouse_url)
    yield wh
    wh.close()


def refuse_deletes_in_streaming_buffer(wh: BigQueryWarehouse):
    """Fault injection (bqemulator lets DML touch just-streamed rows; BigQuery refuses for up to
    ~30 min): DELETEs on the app's tables raise the BadRequest BigQuery raises. Returns undo()."""
    real = wh.client.query

    def query(sql, *args, **kwargs):
        if sql.startswith("DELETE FROM") and f"`{DATASET}`" in sql:
            table = sql.split()[2].replace("`", "")
            raise BadRequest(STREAMING_BUFFER_ERROR.format(table=table))
        return real(sql, *args, **kwargs)

    wh.client.query = query
    return lambda: setattr(wh.client, "query", real)


def gleanpipe(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_deletion_refused_by_the_streaming_buffer_stays_pending_until_a_retry_succeeds(
        store, bq, bq_warehouse_url, tmp_path):
    loader = Loader(store, bq)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A, events=EVENTS)),
                      put_ping(store, make_ping(CLIENT_B))])
    undo = refuse_deletes_in_streaming_buffer(bq)
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    doc = deletion.rsplit("/", 1)[1][:-5]
    assert loader.load_keys([deletion]).deletions == 1
    query = lambda sql: bq.query(sql)[1]
    [(executed, deleted, attempts, error)] = query(
        "SELECT executed_at, rows_deleted, attempts, last_error FROM _gleanpipe.deletions")
    assert (executed, deleted, attempts) == (None, 0, 1) and "streaming buffer" in error
    assert bq.status()["deletions_pending"] == 1 and bq.status()["deletions"] == 0
    # the client is already treated as deleted: a late ping is not loaded
    assert loader.load_keys([put_ping(store, make_ping(CLIENT_A, seq=9))]).skipped_deleted == 1
    # retried while BigQuery still refuses: still pending, never dropped
    [attempt] = bq.retry_deletions()
    assert (attempt.document_id, attempt.done, attempt.rows_deleted) == (doc, False, 0)
    assert "streaming buffer" in attempt.error
    assert query("SELECT attempts, executed_at FROM _gleanpipe.deletions") == [(2, None)]
    assert query(f"SELECT count(*) FROM {DATASET}.baseline WHERE client_info.client_id = '{CLIENT_A}'") == [(1,)]
    undo()
    time.sleep(1.1)  # GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S

    # the scheduled `gleanpipe deletions`, as a user runs it, once the buffer is flushed
    env = {"GLEANPIPE_WAREHOUSE_URL": bq_warehouse_url, "GLEANPIPE_DATA_DIR": str(tmp_path / "unused")}
    # even beside a `serve` loading into this BigQuery (this process stands in for it): serve does not retry
    (tmp_path / "unused").mkdir()
    write_state(tmp_path / "unused", {"pid": os.getpid(), "admin_url": "http://127.0.0.1:9", "token": "t",
                                      "warehouse_url": bq_warehouse_url, "store_url": store.url})
    lock = take_serve_lock(tmp_path / "unused")
    out = gleanpipe("deletions", env=env)
    os.close(lock)
    assert out.returncode == 0, out.stderr
    assert f"done     {DATASET}  client {CLIENT_A}  (request {doc}): 3 rows deleted" in out.stdout
    assert "1 carried out, 0 still pending" in out.stdout
    [(executed, deleted, attempts, error)] = query(
        "SELECT executed_at IS NOT NULL, rows_deleted, attempts, last_error FROM _gleanpipe.deletions")
    assert (executed, deleted, attempts, error) == (True, 3, 3, None)
    assert query(f"SELECT client_info.client_id FROM {DATASET}.baseline") == [(CLIENT_B,)]
    assert query(f"SELECT count(*) FROM {DATASET}.events_stream") == [(0,)]
    out = gleanpipe("deletions", env=env)
    assert out.returncode == 0 and "0 carried out, 0 still pending" in out.stdout


def test_a_deletion_request_loaded_twice_is_recorded_once(store, bq_warehouse_url, monkeypatch):
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "3600")  # stays pending throughout
    wh = open_warehouse(bq_warehouse_url)
    try:
        loader = Loader(store, wh)
        deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
        loader.load_keys([deletion])
        loader.load_keys([deletion])
        assert wh.query("SELECT client_id, attempts, executed_at FROM _gleanpipe.deletions")[1] == [
            (CLIENT_A, 2, None)]
    finally:
        wh.close()


def test_a_deletion_request_recorded_twice_by_loads_at_the_same_moment_still_loads_and_is_carried_out(store, bq):
    """Two loads of one deletion request at once can each insert its record (an insert-only MERGE
    does not see the other's new row; bqemulator runs one statement at a time, so the second record
    is inserted here by hand). A later load of it, and the retries, still work on both records."""
    loader = Loader(store, bq)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A))])
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    # both loads leave it pending however slow bqemulator is (a second between them made it settle)
    bq.deletions_settle_s = 3600
    assert loader.load_keys([deletion]).deletions == 1
    bq.client.query("INSERT INTO `_gleanpipe`.`deletions` SELECT * FROM `_gleanpipe`.`deletions`").result()
    assert bq.query("SELECT count(*) FROM _gleanpipe.deletions")[1] == [(2,)]
    result = loader.load_keys([deletion])  # before: ValueError, too many values to unpack, for ever
    assert (result.deletions, result.errors) == (1, 0)
    assert bq.query("SELECT executed_at IS NULL, attempts FROM _gleanpipe.deletions")[1] == [(True, 2)] * 2
    bq.deletions_settle_s = 1  # the fixture's GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S, for the retries
    time.sleep(1.1)
    assert [a.done for a in bq.retry_deletions()] == [True, True]  # one per record: both updated by each
    records = bq.query("SELECT executed_at IS NOT NULL, attempts FROM _gleanpipe.deletions")[1]
    assert records == [(True, 4)] * 2  # two loads, then the two retries
    assert bq.query(f"SELECT count(*) FROM {DATASET}.baseline_v1")[1] == [(0,)]
    loader.load_keys([deletion])  # carried out: not attempted again
    assert bq.query("SELECT executed_at IS NOT NULL, attempts FROM _gleanpipe.deletions")[1] == records
    assert bq.retry_deletions() == []


def test_a_deletion_request_recorded_twice_settles_from_its_latest_record_and_is_done_once_either_is(store, bq):
    """Of a request's two records (two loads at the same moment), a later load settles it from the
    latest one (the later loader's deleted clients may be the last ones re-read), and does not
    attempt it again once either record says it was carried out: the other is for `deletions`."""
    loader = Loader(store, bq)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A))])
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    assert loader.load_keys([deletion]).deletions == 1  # recorded now: pending (settles in 1 s)
    bq.client.query("INSERT INTO `_gleanpipe`.`deletions` SELECT dataset, client_id, document_id, requested_at, "
                    "executed_at, rows_deleted, attempts, last_error, TIMESTAMP_ADD(recorded_at, INTERVAL 1 HOUR) "
                    "FROM `_gleanpipe`.`deletions`").result()  # the other loader's record, an hour later
    time.sleep(1.1)  # GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S after the first record, not after the second
    loader.load_keys([deletion])
    records = bq.query("SELECT executed_at IS NULL, attempts, last_error FROM _gleanpipe.deletions")[1]
    assert [(pending, attempts) for pending, attempts, _ in records] == [(True, 2)] * 2
    assert all(error.startswith("rows deleted; to run again from 1 s after the request") for *_, error in records)
    bq.client.query("UPDATE `_gleanpipe`.`deletions` SET executed_at = CURRENT_TIMESTAMP() "
                    "WHERE recorded_at = (SELECT MIN(recorded_at) FROM `_gleanpipe`.`deletions`)").result()
    loader.load_keys([deletion])  # one record carried out: the load leaves the request alone
    assert sorted(bq.query("SELECT executed_at IS NULL, attempts FROM _gleanpipe.deletions")[1]) == [
        (False, 2), (True, 2)]


def test_late_ping_from_an_instance_that_did_not_know_yet_is_deleted_by_the_final_run(
        store, bq_warehouse_url, monkeypatch):
    """Instance `two` read the deleted clients before `one` recorded the request, so it still loads
    a late ping of that client. `one`'s DELETE succeeded, but the request stays pending until the
    settle time has passed; the run after that (`gleanpipe deletions`) deletes the late row."""
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "3600")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "3600")
    one, two = open_warehouse(bq_warehouse_url), open_warehouse(bq_warehouse_url)
    try:
        Loader(store, two).load_keys([put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_B))])
        Loader(store, one).load_keys([put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")])
        [(executed, deleted, error)] = one.query("SELECT executed_at, rows_deleted, last_error "
                                                 "FROM _gleanpipe.deletions")[1]
        assert (executed, deleted) == (None, 1) and error.startswith("rows deleted; to run again from 3600 s")
        late = put_ping(store, make_ping(CLIENT_A, seq=5))
        assert Loader(store, two).load_keys([late]).inserted == 1  # `two` does not know yet
        [attempt] = one.retry_deletions()  # too early: still pending
        assert (attempt.done, attempt.rows_deleted) == (False, 1)
    finally:
        one.close()
        two.close()
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "1")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "1")
    time.sleep(1.1)
    later = open_warehouse(bq_warehouse_url)
    try:
        [attempt] = later.retry_deletions()
        assert (attempt.done, attempt.rows_deleted, attempt.error) == (True, 0, None)
        assert later.query(f"SELECT client_info.client_id FROM {DATASET}.baseline")[1] == [(CLIENT_B,)]
        assert later.query("SELECT rows_deleted, attempts, executed_at IS NOT NULL FROM _gleanpipe.deletions")[1] == [
            (2, 3, True)]
    finally:
        later.close()


def test_settle_time_shorter_than_the_refresh_is_refused(monkeypatch):
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "60")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "30")
    with pytest.raises(ValueError, match="SETTLE_S must be at least"):
        open_warehouse("bigquery://p1/US")


def test_deletions_made_by_another_instance_are_seen_after_the_refresh(store, bq_warehouse_url, monkeypatch):
    """Two loaders (two function instances) on one project: the second learns of the first's
    deletion request when it re-reads _gleanpipe.deletions (GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S)."""
    import time

    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "1")
    one, two = open_warehouse(bq_warehouse_url), open_warehouse(bq_warehouse_url)
    try:
        assert Loader(store, two).load_keys([put_ping(store, make_ping(CLIENT_A))]).inserted == 1  # reads the list
        Loader(store, one).load_keys([put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")])
        time.sleep(1.1)
        assert Loader(store, two).load_keys([put_ping(store, make_ping(CLIENT_A))]).skipped_deleted == 1
    finally:
        one.close()
        two.close()


# The message BigQuery gives when it aborts a DML statement because another one changed the table at
# the same time (it retries such a statement a few times itself first).
CONCURRENT_UPDATE_ERROR = "Could not serialize access to table {table} due to concurrent update"


def conflict_on(wh: BigQueryWarehouse, statement: str, times: int = 1) -> list[str]:
    """Fault injection (bqemulator runs one statement at a time, so two never conflict there; on
    BigQuery two loaders, or a loader and the scheduled `deletions` run, changing
    _gleanpipe.deletions at once do): the next ``times`` statements starting with ``statement`` raise
    the BadRequest BigQuery raises for them. Returns the SQL of the statements refused so far."""
    real, refused = wh.client.query, []

    def query(sql, *args, **kwargs):
        if sql.startswith(statement) and len(refused) < times:
            refused.append(sql)
            raise BadRequest(CONCURRENT_UPDATE_ERROR.format(table=f"{wh.project}:_gleanpipe.deletions"))
        return real(sql, *args, **kwargs)

    wh.client.query = query
    return refused


@pytest.mark.parametrize("message,conflict", [
    # BigQuery's two wordings (kafka-connect-bigquery#279 and m-lab/etl-gardener#272; dlt#2892 and
    # estuary/connectors#111), both a 400 "invalidQuery"
    ("Could not serialize access to table p:_gleanpipe.deletions due to concurrent update", True),
    ("Query error: Transaction is aborted due to concurrent update against table p:_gleanpipe.deletions. "
     "Transaction ID: 61e30eea-0000-2dab-8e60-94eb2c1b1a92 at [1:1]", True),
    # too many at once (m-lab/etl-gardener#293: a 400 "resourcesExceeded"; dlt#161: a 400 when it is
    # not the 403 rate limit, which is transient as a Forbidden already)
    ("Resources exceeded during query execution: Too many DML statements outstanding against table "
     "p:_gleanpipe.errors, limit is 20", True),
    ("Exceeded rate limits: too many table update operations for this table. For more information, see "
     "https://cloud.google.com/bigquery/troubleshooting-errors", True),
    ("Resources exceeded during query execution: The query could not be executed in the allotted memory", False),
    ("UPDATE/MERGE must match at most one source row for each target row", False),
    ("Syntax error: Unexpected keyword UPDATE at [1:1]", False)])
def test_bigquerys_wordings_of_a_dml_conflict_or_too_many_at_once_and_no_other_400_are_transient(message, conflict):
    from google.api_core.exceptions import Conflict

    from gleanpipe.warehouse.bigquery import dml_conflict

    assert (dml_conflict(BadRequest(message)) is not None) is conflict
    assert dml_conflict(Conflict(message)) is None  # a 409 (a job id or table already there) is none


def test_a_deletion_request_whose_record_meets_another_loaders_statement_is_retried_as_transient(
        bq_emulator, bq_warehouse_url, fn_env, monkeypatch, caplog):
    """The load function records a deletion request with a MERGE into _gleanpipe.deletions, which
    BigQuery aborts when another instance changes that table at the same moment. Before, that
    BadRequest left the function as a 500 with a traceback (functions-framework's page), where
    every other transient trouble is a 503 and one log line; now it is one of those, and the next
    delivery records the request (once) and carries it out."""
    from functions_framework import create_app

    from conftest import ROOT
    from gleanpipe import functions as gp_functions
    from gleanpipe.storage.local import LocalStore
    from test_load import storage_event

    monkeypatch.setenv("GLEANPIPE_WAREHOUSE_URL", bq_warehouse_url)  # fn_env cleared GLEANPIPE_*: set again
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", bq_emulator.endpoint)
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "3600")  # stays pending: one DELETE run
    client = create_app(target="load", source=str(ROOT / "functions" / "main.py"),
                        signature_type="cloudevent").test_client()
    store = LocalStore(fn_env / "store")
    headers, body = storage_event(put_ping(store, make_ping(CLIENT_A)))
    assert client.post("/", headers=headers, data=body).status_code == 200
    wh = gp_functions.loader().warehouse
    refused = conflict_on(wh, "MERGE")
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    headers, body = storage_event(deletion)
    with caplog.at_level("WARNING", logger="gleanpipe.functions"):
        answer = client.post("/", headers=headers, data=body)
    assert answer.status_code == 503 and len(refused) == 1
    [logged] = [r for r in caplog.records if r.name == "gleanpipe.functions"]
    assert logged.getMessage().startswith(f"load of {deletion} failed, the trigger retries: BigQuery: 400 Could not "
                                          "serialize access to table"), logged.getMessage()
    assert "another statement changed the table at the same time" in logged.getMessage()
    assert logged.exc_info is None
    assert wh.query("SELECT count(*) FROM _gleanpipe.deletions")[1] == [(0,)]

    headers, body = storage_event(deletion)  # the trigger's next delivery
    assert client.post("/", headers=headers, data=body).status_code == 200
    doc = deletion.rsplit("/", 1)[1][:-5]
    assert wh.query("SELECT document_id, client_id, attempts FROM _gleanpipe.deletions")[1] == [(doc, CLIENT_A, 1)]
    assert wh.query(f"SELECT count(*) FROM {DATASET}.baseline_v1")[1] == [(0,)]


def test_a_deletion_retry_that_meets_another_statement_leaves_that_request_pending_and_tries_the_rest(store, bq):
    """`gleanpipe deletions` (and the scheduled function) records each attempt with an UPDATE of
    _gleanpipe.deletions, which BigQuery aborts when a loader records a new request at that moment.
    Before, that BadRequest ended the whole run (the function answered 500, the requests after it
    were not tried until the next schedule); now that request stays pending with the reason, and
    the others are carried out."""
    loader = Loader(store, bq)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_B))])
    undo = refuse_deletes_in_streaming_buffer(bq)
    first = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request", ts="2026-11-23T08:00:00.000000Z")
    second = put_ping(store, make_ping(CLIENT_B), doc_type="deletion-request", ts="2026-11-23T09:00:00.000000Z")
    assert loader.load_keys([first, second]).deletions == 2  # both pending: the buffer
    undo()
    time.sleep(1.1)  # GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S
    refused = conflict_on(bq, "UPDATE")
    one, two = bq.retry_deletions()
    assert len(refused) == 1
    assert (one.client_id, one.done) == (CLIENT_A, False)
    assert one.error.startswith("BigQuery: 400 Could not serialize access to table"), one.error
    assert (two.client_id, two.done, two.rows_deleted, two.error) == (CLIENT_B, True, 1, None)
    assert bq.query("SELECT client_id, executed_at IS NULL FROM _gleanpipe.deletions ORDER BY requested_at")[1] == [
        (CLIENT_A, True), (CLIENT_B, False)]
    [again] = bq.retry_deletions()  # the next run: no conflict now
    assert (again.client_id, again.done, again.error) == (CLIENT_A, True, None)
    assert bq.query(f"SELECT count(*) FROM {DATASET}.baseline_v1")[1] == [(0,)]


def refuse_rows(wh: BigQueryWarehouse, bad_ids: set[str], message: str, reason: str = "invalid"):
    """Fault injection: insertAll's per-row refusal, in the shape BigQuery answers it (bqemulator
    answers a bad value with a 500 instead). Rows of a request with a refused row are 'stopped'."""
    real = wh.client.insert_rows_json

    def insert(table, rows, row_ids=None, **kwargs):
        bad = [i for i, rid in enumerate(row_ids or []) if rid in bad_ids]
        if not bad:
            return real(table, rows, row_ids=row_ids, **kwargs)
        return [{"index": i, "errors": [{"reason": reason, "location": "metrics.counter.toolbox_a", "message": message}
                                        if i in bad else {"reason": "stopped", "message": ""}]}
                for i in range(len(rows))]

    wh.client.insert_rows_json = insert


def test_a_refused_row_goes_to_errors_and_the_rest_of_the_batch_loads(store, bq):
    good = put_ping(store, make_ping(CLIENT_A))
    bad = put_ping(store, make_ping(CLIENT_B))
    bad_id = bad.rsplit("/", 1)[1][:-5]
    refuse_rows(bq, {bad_id}, "Cannot convert value to integer (bad value): 1180591620717411303424")
    result = Loader(store, bq).load_keys([good, bad])
    assert (result.inserted, result.errors) == (1, 1)
    assert bq.query(f"SELECT client_info.client_id FROM {DATASET}.baseline")[1] == [(CLIENT_A,)]
    [(key, etype, message)] = bq.query("SELECT object_key, error_type, error_message FROM _gleanpipe.errors")[1]
    assert (key, etype) == (bad, "warehouse") and "Cannot convert value to integer" in message


def test_fields_not_yet_visible_to_streaming_make_the_load_retry(store, bq):
    """Right after update_table, BigQuery's streaming system may not know the new fields for a
    while and refuses rows with 'no such field': that is transient, the trigger must retry."""
    key = put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.a": 1}}))
    refuse_rows(bq, {key.rsplit("/", 1)[1][:-5]}, "no such field: metrics.counter.toolbox_a.")
    with pytest.raises(WarehouseUnavailable, match="not visible to streaming yet"):
        Loader(store, bq).load_keys([key])


def test_a_table_deleted_under_a_running_loader_is_made_again_on_the_retry(store, bq):
    """Before: the loader kept the table it had written to in memory for good, so once it was
    deleted (by hand, or to rebuild with `replay`) every load failed until the process restarted."""
    first = put_ping(store, make_ping(CLIENT_A))
    assert Loader(store, bq).load_keys([first]).inserted == 1
    bq.client.delete_table(f"{bq.project}.{DATASET}.baseline_v1")
    second = put_ping(store, make_ping(CLIENT_B))
    with pytest.raises(WarehouseUnavailable, match="not visible to streaming yet"):
        Loader(store, bq).load_keys([second])  # the first attempt finds it gone: the trigger retries
    assert Loader(store, bq).load_keys([second]).inserted == 1
    assert bq.query(f"SELECT client_info.client_id FROM {DATASET}.baseline_v1")[1] == [(CLIENT_B,)]


def test_an_emulator_that_is_down_is_transient(store, monkeypatch):
    from conftest import free_port

    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_RETRY_S", "1")
    wh = open_warehouse("bigquery://nobody-here/US")
    try:
        with pytest.raises(WarehouseUnavailable):
            Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A))])
    finally:
        wh.close()


@pytest.mark.parametrize("url", ["bigquery://", "bigquery://proj", "bigquery://proj/", "bigquery://Proj!/US",
                                 "bigquery://proj/US/extra"])
def test_bad_bigquery_urls_say_what_they_should_look_like(url):
    with pytest.raises(ValueError, match="bigquery://PROJECT/LOCATION"):
        open_warehouse(url)


def test_url_parts():
    assert parse_url("bigquery://my-project/europe-west1") == ("my-project", "europe-west1")


def test_bad_retry_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_RETRY_S", "soon")
    with pytest.raises(ValueError, match="GLEANPIPE_BIGQUERY_RETRY_S must be a whole number"):
        open_warehouse("bigquery://p1/US")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_RETRY_S", "3601")  # it is each request's timeout too
    with pytest.raises(ValueError, match="^GLEANPIPE_BIGQUERY_RETRY_S must be at most 3600, got 3601$"):
        open_warehouse("bigquery://p1/US")


@pytest.mark.parametrize("env, value, bound", [("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "86401", 86400),
                                               ("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "10" + "0" * 20, 604800)])
def test_the_deletion_timers_have_an_upper_bound(monkeypatch, env, value, bound):
    """Before: any value was taken, 1e21 s included: deletions that could never become final."""
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=f"^{env} must be at most {bound}, got {value}$"):
        open_warehouse("bigquery://p1/US")


def test_cli_reports_a_bad_warehouse_url_without_a_traceback(tmp_path):
    out = gleanpipe("deletions", "--data-dir", str(tmp_path), "--warehouse-url", "bigquery://only-a-project")
    assert out.returncode == 2 and "bigquery://PROJECT/LOCATION" in out.stderr and "Traceback" not in out.stderr


def test_deletions_command_on_duckdb(tmp_path):
    """DuckDB carries out a deletion inside the load, so nothing is pending; a record left
    pending (as an older tool or a crash between steps could leave it) is carried out."""
    from gleanpipe.storage.local import LocalStore

    data = tmp_path / "data"
    store = LocalStore(data / "store")
    wh = open_warehouse(f"duckdb://{data / 'warehouse.duckdb'}")
    Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_B))])
    wh.con.execute("INSERT INTO _gleanpipe.deletions (dataset, client_id, document_id, requested_at) "
                   "VALUES (?, ?, 'd0c', now())", [DATASET, CLIENT_B])
    wh.close()
    out = gleanpipe("deletions", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"done     {DATASET}  client {CLIENT_B}  (request d0c): 1 row deleted",
        f"1 carried out, 0 still pending (duckdb://{data / 'warehouse.duckdb'})"]
    out = gleanpipe("deletions", "--data-dir", str(data))
    assert out.stdout.splitlines()[-1].startswith("0 carried out, 0 still pending")
    wh = open_warehouse(f"duckdb://{data / 'warehouse.duckdb'}", read_only=True)
    try:
        assert wh.query(f"SELECT client_info.client_id FROM {DATASET}.baseline")[1] == [(CLIENT_A,)]
        assert wh.query("SELECT rows_deleted, attempts FROM _gleanpipe.deletions")[1] == [(1, 1)]
    finally:
        wh.close()


def test_deletions_while_serve_runs_lists_the_pending_ones_and_leaves_the_file_to_serve(tmp_path):
    """`gleanpipe deletions` while serve owns the DuckDB file: it asks serve for the pending
    requests (it does not open the file serve holds), lists them and exits 1 while any is left."""
    from conftest import ServeProcess
    from gleanpipe.storage.local import LocalStore

    data = tmp_path / "data"
    store = LocalStore(data / "store")
    wh = open_warehouse(f"duckdb://{data / 'warehouse.duckdb'}")
    Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A))])
    wh.con.execute("INSERT INTO _gleanpipe.deletions (dataset, client_id, document_id, requested_at) "
                   "VALUES (?, ?, 'd0c', now())", [DATASET, CLIENT_A])
    wh.close()
    server = ServeProcess(data).start()
    try:
        out = gleanpipe("deletions", "--data-dir", str(data))
    finally:
        assert server.stop() == 0
    assert (out.returncode, out.stderr) == (1, "")
    assert out.stdout.splitlines() == [
        f"pending  {DATASET}  client {CLIENT_A}  (request d0c)",
        f"1 pending; `gleanpipe serve` is running and owns duckdb://{data / 'warehouse.duckdb'}: stop it and run "
        "`gleanpipe deletions` again to retry them"]
    out = gleanpipe("deletions", "--data-dir", str(data))  # serve stopped: carried out on the file
    assert out.stdout.splitlines()[-1] == f"1 carried out, 0 still pending (duckdb://{data / 'warehouse.duckdb'})"


def test_status_and_deletions_on_an_empty_project(bq):
    assert bq.status() == {"tables": [], "load_errors": {}, "deletions": 0, "deletions_pending": 0}
    assert bq.retry_deletions() == []


def test_status_beside_bigquery_counts_every_spooled_ping_and_says_it_did_not_check(store, bq_warehouse_url, data_dir):
    """With serve stopped, `status` checks what serve will load against a DuckDB warehouse only.
    Beside BigQuery it counts every spooled ping, written out as an object or not, and says that
    some may be rows already (before: it left out those written out, and said nothing)."""
    import orjson

    from gleanpipe.storage.spool import SPOOL
    from gleanpipe.storage.spool_reader import SpoolReader
    from gleanpipe.storage.spool_writer import SpoolWriter
    from test_spool import raw

    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
    for i in range(3):
        writer.append(*raw(seq=i))
    writer.close()
    assert len(SpoolReader(store).pending(1)) == 1  # written out as an object, then serve stopped
    args = ("status", "--data-dir", str(data_dir), "--warehouse-url", bq_warehouse_url)
    out = gleanpipe(*args, "--json")
    assert out.returncode == 0, out.stderr
    info = orjson.loads(out.stdout)
    note = f"at most: not checked against {bq_warehouse_url}, so some may be rows already"
    assert (info["pending"], info.get("pending_note")) == (3, note)
    assert f"waiting to load: 3 ({note})\n" in gleanpipe(*args).stdout


def test_bigquery_settings_are_declared_and_documented():
    from gleanpipe.config import SETTINGS

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    for name, default in (("GLEANPIPE_BIGQUERY_ENDPOINT", ""), ("GLEANPIPE_BIGQUERY_RETRY_S", "60"),
                          ("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "60"),
                          ("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "300")):
        assert SETTINGS[name].default == default
        assert f"| `{name}` |" in readme


def test_load_function_and_cli_query_on_bigquery(bq_emulator, bq_warehouse_url, fn_env, monkeypatch, tmp_path):
    """The same `load` CloudEvent function as in local mode, with only the warehouse URL changed;
    then the README's labeled-counter query through `gleanpipe query` against the emulator."""
    import json

    from functions_framework import create_app

    from conftest import ROOT
    from gleanpipe.storage.local import LocalStore
    from test_load import storage_event
    from test_warehouses import readme_queries

    monkeypatch.setenv("GLEANPIPE_WAREHOUSE_URL", bq_warehouse_url)  # fn_env cleared GLEANPIPE_*: set again
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", bq_emulator.endpoint)
    client = create_app(target="load", source=str(ROOT / "functions" / "main.py"),
                        signature_type="cloudevent").test_client()
    store = LocalStore(fn_env / "store")
    for tools in ({"hammer": 2, "pliers": 1}, {"hammer": 5}):
        key = put_ping(store, make_ping(CLIENT_A, metrics={"labeled_counter": {"toolbox.tool_used": tools}}),
                       doc_type="metrics")
        headers, body = storage_event(key)
        assert client.post("/", headers=headers, data=body).status_code == 200
    out = gleanpipe("query", "--format", "json", "--data-dir", str(tmp_path / "none"), readme_queries()[0])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"tool_name": "hammer", "uses": 7}, {"tool_name": "pliers", "uses": 1}]
    # read-only there too (before: each ran and exited 0, the table was emptied and then dropped)
    table = f"{DATASET}.metrics_v1"
    for sql, says in ((f"DELETE FROM {table} WHERE true", "a DELETE statement is not run"),
                      (f"SELECT 1; DROP TABLE {table}", "one statement at a time: this SQL has 2"),
                      (f"/* ; */ CREATE TABLE {DATASET}.probe (a INT64)", "a CREATE statement is not run")):
        refused = gleanpipe("query", "--data-dir", str(tmp_path / "none"), sql)
        assert refused.returncode == 1 and says in refused.stderr, (sql, refused.stderr)
    count = gleanpipe("query", "--format", "json", "--data-dir", str(tmp_path / "none"),
                      f"SELECT count(*) AS n FROM `{table}` -- counted; after the refusals")
    assert json.loads(count.stdout) == [{"n": 2}], count.stderr
    # BigQuery's own refusals in one line (before: five, with the job's location and id, the message
    # twice); a missing dataset's is followed by what the warehouse has (missing_table), after a blank line
    for sql, hint in (("SELECT * FROM nowhere.nothing", "There is no dataset nowhere: "),
                      (f"SELECT no_such_column FROM {table}", None)):
        bad = gleanpipe("query", "--data-dir", str(tmp_path / "none"), sql)
        assert bad.returncode == 1 and bad.stderr.startswith("Error: BigQuery: "), bad.stderr
        said, *advice = bad.stderr.strip().split("\n\n")
        assert len(said.splitlines()) == 1 and "Job ID" not in bad.stderr, bad.stderr
        assert [a[:len(hint)] for a in advice] == ([hint] if hint else []), bad.stderr
        # a dataset the query names is its own mistake, not one the loader makes again
        assert "made again" not in bad.stderr, bad.stderr


def test_a_request_refused_whole_goes_to_errors(store, bq):
    """insertAll refuses a request over its 10 MB limit with a 400 (bqemulator has no such limit):
    injected for one ping, which lands in the errors table while the other loads."""
    good, big = put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_B))
    big_id = big.rsplit("/", 1)[1][:-5]
    real = bq.client.insert_rows_json

    def insert(table, rows, row_ids=None, **kwargs):
        if big_id in (row_ids or []):
            raise BadRequest("Request payload size exceeds the limit: 10485760 bytes.")
        return real(table, rows, row_ids=row_ids, **kwargs)

    bq.client.insert_rows_json = insert
    result = Loader(store, bq).load_keys([good, big])
    assert (result.inserted, result.errors) == (1, 1)
    [(key, message)] = bq.query("SELECT object_key, error_message FROM _gleanpipe.errors")[1]
    assert key == big and "payload size exceeds the limit" in message


def test_a_missing_view_is_made_by_the_next_loader(store, bq, bq_warehouse_url):
    """A loader that created the table but stopped before its view: the next process makes it."""
    Loader(store, bq).load_keys([put_ping(store, make_ping(CLIENT_A))])
    bq.client.delete_table(f"{bq.project}.{DATASET}.baseline")
    other = open_warehouse(bq_warehouse_url)
    try:
        Loader(store, other).load_keys([put_ping(store, make_ping(CLIENT_B))])
        assert other.query(f"SELECT count(*) FROM {DATASET}.baseline")[1] == [(2,)]
    finally:
        other.close()


def test_a_table_streaming_does_not_know_yet_makes_the_load_retry(store, bq):
    """Streaming into a table created a moment ago can answer 404 on BigQuery (never on the
    emulator): injected once; the load fails as transient, and its retry loads the ping."""
    from google.api_core.exceptions import NotFound

    real, calls = bq.client.insert_rows_json, []

    def insert(table, rows, **kwargs):
        calls.append(table)
        if len(calls) == 1:
            raise NotFound(f"Table {table} not found.")
        return real(table, rows, **kwargs)

    bq.client.insert_rows_json = insert
    key = put_ping(store, make_ping(CLIENT_A))
    with pytest.raises(WarehouseUnavailable, match="not visible to streaming yet"):
        Loader(store, bq).load_keys([key])
    assert Loader(store, bq).load_keys([key]).inserted == 1
    assert bq.query(f"SELECT client_info.client_id FROM {DATASET}.baseline")[1] == [(CLIENT_A,)]


def test_error_rows_still_in_the_streaming_buffer_stay_until_they_can_go(store, bq):
    """An object that failed and then loads: its error rows are deleted, but BigQuery refuses while
    they are in the streaming buffer (injected: bqemulator allows it). The load still succeeds and
    status counts the object once; a later load of it deletes the rows."""
    from gleanpipe.naming import DocumentPath

    path = DocumentPath("org-example-toolbox", "baseline", "1", "5d0e7c1a-3b2f-4e6d-9a8b-7c6d5e4f3a2b")
    store.put_new(path.key, b"broken")
    for _ in range(2):
        assert Loader(store, bq).load_keys([path.key]).errors == 1
    assert bq.status()["load_errors"] == {"raw_object": 1}
    (store.root / path.key).unlink()
    put_ping(store, make_ping(CLIENT_A), document_id=path.document_id)
    real = bq.client.query

    def query(sql, *args, **kwargs):
        if sql.startswith("DELETE FROM") and "`errors`" in sql:
            raise BadRequest(STREAMING_BUFFER_ERROR.format(table=f"{bq.project}._gleanpipe.errors"))
        return real(sql, *args, **kwargs)

    bq.client.query = query
    assert Loader(store, bq).load_keys([path.key]).inserted == 1
    assert bq.query("SELECT count(*) FROM _gleanpipe.errors")[1] == [(1,)]
    bq.client.query = real
    Loader(store, bq).load_keys([path.key])
    assert bq.query("SELECT count(*) FROM _gleanpipe.errors")[1] == [(0,)]
    assert bq.query(f"SELECT count(*) FROM {DATASET}.baseline")[1] == [(1,)]


def test_a_loader_allowed_only_on_its_datasets_uses_an_existing_one_and_names_a_missing_one(bq, store):
    """A deployed loader has dataEditor on its datasets only (make deploy creates them) and no
    bigquery.datasets.create. bqemulator has no IAM, so the refusal of a create is injected with
    the error BigQuery gives (403); get_dataset and everything after it run on the emulator."""
    from google.api_core.exceptions import Forbidden

    real = bq.client.create_dataset
    created = []

    def create_dataset(ds, *args, **kwargs):
        created.append(ds.dataset_id)
        raise Forbidden(f"Access Denied: Project {bq.project}: User does not have bigquery.datasets.create permission")

    real(f"{bq.project}._gleanpipe", exists_ok=True)  # make deploy creates it beside the configured apps
    bq.client.create_dataset = create_dataset
    with pytest.raises(WarehouseUnavailable, match="does not exist and this loader may not create it.*GLEANPIPE_DEPLOY_APPS"):
        Loader(store, bq).load_keys([put_ping(store, make_ping(CLIENT_A))])
    assert created == [DATASET]

    real(f"{bq.project}.{DATASET}")  # what `make deploy` does for a configured app
    created.clear()
    result = Loader(store, bq).load_keys([put_ping(store, make_ping(CLIENT_B))])
    assert (result.inserted, created) == (1, [])  # the dataset was found, never created
    _, rows = bq.query(f"SELECT client_info.client_id FROM {DATASET}.baseline_v1")
    assert rows == [(CLIENT_B,)]


def test_a_loader_refused_even_a_look_at_a_missing_dataset_names_the_fix(bq, store):
    """BigQuery answers 403, not 404, to an account with rights on other datasets only when it asks for
    a dataset it cannot see (missing or not its own). bqemulator has no IAM: the refusal is injected."""
    from google.api_core.exceptions import Forbidden

    def get_dataset(ref, *args, **kwargs):
        raise Forbidden(f"Access Denied: Dataset {ref}: Permission bigquery.datasets.get denied (or it may not exist)")

    bq.client.get_dataset = get_dataset
    with pytest.raises(WarehouseUnavailable, match=r"may not read it, or it does not exist.*GLEANPIPE_DEPLOY_APPS"):
        Loader(store, bq).load_keys([put_ping(store, make_ping(CLIENT_A))])


def test_a_loader_whose_gleanpipe_tables_were_deleted_makes_them_again(bq, store):
    """Before: once `_gleanpipe.deletions` was gone (deleted by hand, a BigQuery reset), every later
    load of that instance failed with a 500 and a traceback until it restarted: the table was known
    to exist, and its NotFound was no retry. Now the load that finds it gone is a retry, and the
    next one makes it again."""
    assert Loader(store, bq).load_keys([put_ping(store, make_ping(CLIENT_A))]).inserted == 1
    bq.client.delete_table(f"{bq.project}._gleanpipe.deletions")
    time.sleep(1.1)  # GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S (1 here): the deletions list is read again
    key = put_ping(store, make_ping(CLIENT_B))
    with pytest.raises(WarehouseUnavailable, match="made again on the next try"):
        Loader(store, bq).load_keys([key])
    assert Loader(store, bq).load_keys([key]).inserted == 1
    assert bq.query("SELECT count(*) FROM _gleanpipe.deletions")[1] == [(0,)]


def test_daily_active_clients_works_when_the_baseline_table_has_no_metrics_yet(bq, store):
    """The SDK's first `active` baseline carries no metrics, and on Cloud Functions it can make
    baseline_v1 alone, with no `metrics` column: daily_active_clients read that column anyway and
    failed ("metrics not found"). It counts the ping, as DuckDB's does."""
    Loader(store, bq).load_keys([put_ping(store, make_ping(CLIENT_A))])
    assert "metrics" not in [f.name for f in bq.client.get_table(f"{bq.project}.{DATASET}.baseline_v1").schema]
    assert bq.query(f"SELECT clients, pings FROM {DATASET}.daily_active_clients")[1] == [(1, 1)]
    assert bq.query(f"SELECT count(*) FROM {DATASET}.metric_daily")[1] == [(0,)]
    # The next baseline adds a metric (the SDK's inactive one does). bqemulator times out on rows
    # streamed after a widening, so the table is widened as a load widens it and the views are
    # made as after that load: only metric_daily reads `metrics`, which bqemulator widens in its
    # metadata only, so daily_active_clients keeps working there too.
    bq._widen(DATASET, "baseline_v1", schema_of(PING_COLUMNS + (("metrics", metrics_struct({"counter": {"x"}})),)))
    bq._refresh_views(DATASET)
    assert bq.query(f"SELECT clients, pings FROM {DATASET}.daily_active_clients")[1] == [(1, 1)]


def test_a_ping_stored_twice_counts_once_in_the_derived_views(bq, store):
    """A BigQuery table can hold a ping twice (its load delivered again past BigQuery's best-effort
    insertId window, a replay; bqemulator keeps both copies at once). The dedup views show one, and
    so do the derived views now: daily_active_clients, events_daily and metric_daily counted both."""
    key = put_ping(store, make_ping(CLIENT_A, events=EVENTS, metrics={"counter": {"toolbox.launch_count": 3}}))
    for _ in range(2):
        Loader(store, bq).load_keys([key])
    assert bq.query(f"SELECT count(*) FROM {DATASET}.baseline_v1")[1] == [(2,)]  # both copies stored
    assert bq.query(f"SELECT count(*) FROM {DATASET}.baseline")[1] == [(1,)]  # the dedup view
    assert bq.query(f"SELECT clients, pings FROM {DATASET}.daily_active_clients")[1] == [(1, 1)]
    assert bq.query(f"SELECT sum(events) FROM {DATASET}.events_daily")[1] == [(len(EVENTS),)]
    assert bq.query(f"SELECT pings, sum_value FROM {DATASET}.metric_daily "
                    "WHERE metric = 'toolbox_launch_count'")[1] == [(1, 3.0)]


class CountingInserts:
    """A spy on the client's insert_rows_json that calls through: (table, rows) of every request."""

    def __init__(self, client):
        self.calls, self._real = [], client.insert_rows_json
        client.insert_rows_json = self

    def __call__(self, table, rows, **kwargs):
        self.calls.append((str(table).rsplit(".", 1)[1], list(rows)))
        return self._real(table, rows, **kwargs)

    def sizes(self, table):
        return [len(rows) for t, rows in self.calls if t == table]


def test_a_batch_over_max_insert_rows_goes_in_two_requests(store, bq):
    keys = [put_ping(store, make_ping(CLIENT_A, seq=i)) for i in range(MAX_INSERT_ROWS + 1)]
    spy = CountingInserts(bq.client)
    assert Loader(store, bq).load_keys(keys).inserted == 501
    assert spy.sizes("baseline_v1") == [500, 1]
    stored = bq.query(f"SELECT document_id, ping_info.seq FROM {DATASET}.baseline")[1]
    assert sorted(stored, key=lambda r: r[1]) == [(k.rsplit("/", 1)[1][:-5], i) for i, k in enumerate(keys)]


def test_a_batch_over_max_insert_bytes_goes_in_more_requests(store, bq):
    # three rows of about 4 MiB (a long text metric): two fit in one request of at most 9 MiB, the third
    # goes in the next
    big = lambda i: make_ping(CLIENT_A, seq=i, metrics={"text": {"toolbox.notes": f"{i}" * (4 << 20)}})  # noqa: E731
    keys = [put_ping(store, big(i)) for i in range(3)]
    spy = CountingInserts(bq.client)
    assert Loader(store, bq).load_keys(keys).inserted == 3
    chunks = [[len(orjson.dumps(r)) for r in rows] for t, rows in spy.calls if t == "baseline_v1"]
    assert [len(c) for c in chunks] == [2, 1]
    assert sum(chunks[0]) <= MAX_INSERT_BYTES < sum(chunks[0]) + chunks[1][0]
    stored = bq.query(f"SELECT ping_info.seq, LENGTH(metrics.text.toolbox_notes) FROM {DATASET}.baseline")[1]
    assert sorted(stored) == [(i, 4 << 20) for i in range(3)]


def test_a_deletion_request_loaded_again_after_it_was_carried_out_is_not_run_again(store, bq):
    """A replay loads every deletion-request document again: one already carried out keeps its
    record as it is (no second DELETE over the app's tables, attempts and executed_at unchanged)."""
    loader = Loader(store, bq)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A))])
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    assert loader.load_keys([deletion]).deletions == 1  # rows deleted, pending until it settles (1 s)
    time.sleep(1.1)
    [attempt] = bq.retry_deletions()
    assert attempt.done
    record = "SELECT attempts, executed_at, rows_deleted FROM _gleanpipe.deletions"
    [(attempts, executed, deleted)] = bq.query(record)[1]
    assert attempts == 2 and executed is not None
    loader.load_keys([deletion])
    assert bq.query(record)[1] == [(attempts, executed, deleted)]
    assert bq.retry_deletions() == []


def test_a_query_naming_a_table_or_dataset_bigquery_does_not_have_says_what_it_has(store, bq):
    """As on DuckDB (missing_table): the README's baseline query right after a metrics ping got
    BigQuery's bare "Not found"; it now also says when a table is made and what the dataset has."""
    from gleanpipe.warehouse.base import QueryFailed

    Loader(store, bq).load_keys([put_ping(store, make_ping(CLIENT_A), doc_type="metrics")])
    said = {}
    for sql in (f"SELECT count(*) FROM {DATASET}.baseline", "SELECT * FROM nowhere.metrics",
                f"SELECT nope FROM {DATASET}.metrics"):
        with pytest.raises(QueryFailed) as refused:
            bq.read_query(sql)
        said[sql] = str(refused.value)
    has = "daily_active_clients, events_daily, metric_daily, metrics, metrics_v1"
    first, hint = said[f"SELECT count(*) FROM {DATASET}.baseline"].split("\n\n")
    # (bqemulator writes project.dataset.table; BigQuery project:dataset.table: missing_table reads both)
    assert first.startswith(f"BigQuery: 404 Not found: Table {bq.project}.{DATASET}.baseline was not found")
    assert hint == (f"{DATASET} has no table or view baseline yet: a ping's table and its view are made when the "
                    f"first ping of that type is loaded. {DATASET} has: {has}.")
    first, hint = said["SELECT * FROM nowhere.metrics"].split("\n\n")
    assert first.startswith(f"BigQuery: 404 Not found: Dataset {bq.project}:nowhere was not found")
    assert hint == ("There is no dataset nowhere: an app's dataset is made when its first ping is loaded, named "
                    f"after the app id with dots and dashes as underscores. Datasets: {DATASET}.")
    assert "\n" not in said[f"SELECT nope FROM {DATASET}.metrics"]  # not a missing table: BigQuery's words alone


@pytest.mark.parametrize("message,missing", [
    ("BigQuery: 404 Not found: Table my-project:app.baseline was not found in location US", (None, "app")),
    ("BigQuery: 404 Not found: Table example.com:my-project:app.baseline was not found in location EU", (None, "app")),
    ("BigQuery: 404 Not found: Table my-project.app.baseline was not found in location US", (None, "app")),
    ("BigQuery: 404 Not found: Dataset my-project:nowhere was not found in location US", ("nowhere", None)),
    ("BigQuery: 404 Not found: Job my-project:US.bquxjob_1 was not found", (None, None))])
def test_bigquerys_words_for_a_missing_dataset_or_table_are_read_in_every_project_form(message, missing):
    from gleanpipe.warehouse.missing_table import bigquery_hint

    gone, within = missing
    listed = []  # the dataset whose tables the hint asks for (None: the datasets' names only)
    hint = bigquery_hint(message, "SELECT 1", lambda name: listed.append(name) or {"app": ["metrics"]})
    if gone is None and within is None:
        assert (hint, listed) == (None, [])
    elif gone is not None:
        assert listed == [None] and f"\n\nThere is no dataset {gone}: " in hint
    else:
        assert listed == [within] and f"\n\n{within} has no table or view baseline yet" in hint


def test_what_bigquery_said_is_one_line_without_the_repeated_reason(bq):
    """BigQuery's error message repeats itself after "; reason: ..." (with the job's location and
    id on more lines): gleanpipe shows the code and the first part only (warehouse.bigquery.said)."""
    with pytest.raises(WarehouseUnavailable) as refused:
        bq.query("SELECT 1 FROM `nowhere`.`t`")
    said = str(refused.value)
    assert said.startswith(f"BigQuery: 404 Not found: Dataset {bq.project}:nowhere was not found in location ")
    assert "reason" not in said and "\n" not in said and "Job ID" not in said


def test_a_refused_rows_error_names_its_document_id(store, bq):
    """insertAll names a refused row by its index in the request; the error kept for it names the
    ping's document_id (its insertId), which is what a person can look up."""
    good, bad = put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_B))
    bad_id = bad.rsplit("/", 1)[1][:-5]
    refuse_rows(bq, {bad_id}, "Cannot convert value to integer (bad value): 1180591620717411303424")
    assert Loader(store, bq).load_keys([bad, good]).errors == 1
    [(message,)] = bq.query("SELECT error_message FROM _gleanpipe.errors")[1]
    assert f"{DATASET}.baseline_v1: row {bad_id}: Cannot convert value to integer" in message


def test_status_shows_pending_deletion_requests_and_how_to_retry_them(store, bq_warehouse_url, data_dir,
                                                                      monkeypatch):
    """README: `gleanpipe status` shows deletion requests carried out "(and pending ones, when there
    are any)"; "`gleanpipe status` shows how many are pending"."""
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "3600")  # stays pending
    wh = open_warehouse(bq_warehouse_url)
    try:
        assert Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")]
                                           ).deletions == 1
    finally:
        wh.close()
    out = gleanpipe("status", "--data-dir", str(data_dir), "--warehouse-url", bq_warehouse_url)
    assert out.returncode == 0, out.stderr
    assert "deletion requests carried out: 0, pending: 1 (retry: gleanpipe deletions)\n" in out.stdout


def test_a_query_bigquery_refuses_is_the_requests_400_through_serve_as_without_it(bq_warehouse_url, tmp_path):
    """serve loading into BigQuery: a query naming a dataset that is not there is the query's own
    fault. Before: serve's admin API answered BigQuery's refusal (a plain ValueError) 500, "an error
    of serve's own", with a traceback in its log; with serve stopped the command said the same words
    as a plain error. Now both say BigQuery's words (warehouse.base.QueryFailed, answered 400)."""
    from conftest import ServeProcess

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"GLEANPIPE_WAREHOUSE_URL": bq_warehouse_url,
           "GLEANPIPE_BIGQUERY_ENDPOINT": os.environ["GLEANPIPE_BIGQUERY_ENDPOINT"]}
    sql = "SELECT * FROM nowhere.t"
    said = "BigQuery: 404 Not found: Dataset"
    server = ServeProcess(data_dir, env=env).start()
    try:
        through = gleanpipe("query", sql, "--data-dir", str(data_dir), env=env)
    finally:
        server.stop()
    assert through.returncode == 1 and through.stderr.startswith(f"Error: {said}"), through.stderr
    assert "answered 500" not in through.stderr and "Traceback" not in server.read_log()
    alone = gleanpipe("query", sql, "--data-dir", str(data_dir), env=env)
    assert alone.returncode == 1 and alone.stderr.startswith(f"Error: {said}"), alone.stderr


def test_a_query_in_bigquerys_own_sql_runs_through_serve_as_without_it(bq_warehouse_url, tmp_path):
    """Before: serve checked every query with DuckDB's parser, whatever its warehouse, so SQL
    that BigQuery takes and DuckDB cannot parse (a typed array literal) was refused through serve
    ("Parser Error") and ran without it. Now serve on BigQuery leaves the check to BigQuery's
    read_query, as `gleanpipe query` without serve does; a write is still refused both ways."""
    from conftest import ServeProcess

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"GLEANPIPE_WAREHOUSE_URL": bq_warehouse_url,
           "GLEANPIPE_BIGQUERY_ENDPOINT": os.environ["GLEANPIPE_BIGQUERY_ENDPOINT"]}
    sql, write = "SELECT ARRAY<INT64>[1, 2] AS a", "DELETE FROM nowhere.t WHERE TRUE"
    refused = ("Error: the warehouse is read-only for queries: a DELETE statement is not run "
               "(a query starts with SELECT or WITH)\n")
    server = ServeProcess(data_dir, env=env).start()
    try:
        through = gleanpipe("query", "--format", "json", sql, "--data-dir", str(data_dir), env=env)
        through_write = gleanpipe("query", write, "--data-dir", str(data_dir), env=env)
    finally:
        server.stop()
    alone = gleanpipe("query", "--format", "json", sql, "--data-dir", str(data_dir), env=env)
    alone_write = gleanpipe("query", write, "--data-dir", str(data_dir), env=env)
    assert (through.returncode, through.stderr) == (0, "")
    assert json.loads(through.stdout) == [{"a": [1, 2]}]
    assert (alone.returncode, alone.stdout) == (0, through.stdout)
    assert (through_write.returncode, through_write.stderr) == (1, refused)
    assert (alone_write.returncode, alone_write.stderr) == (1, refused)
