"""The Warehouse interface, the same tests over DuckDB (a real file) and BigQuery (a real
bqemulator process, see bq_emulator.py). Where bqemulator cannot show a BigQuery behaviour,
the test says so and covers the code path another way.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from datetime import datetime, timezone

import pytest

from gleanpipe import rawobject
from gleanpipe.views import AGGREGATED_TYPES, VIEW_NAMES

from gleanpipe.load import Loader
from gleanpipe.naming import DocumentPath
from gleanpipe.warehouse import open_warehouse

from conftest import DATASET, ROOT, make_ping
from test_bigquery import refuse_rows
from test_load import CLIENT_A, CLIENT_B, EVENTS, FULL_METRICS, put_ping

TS = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


class WH:
    """A warehouse under test plus the backend-specific ways to look behind its interface."""

    def __init__(self, kind: str, wh, emulator=None):
        self.kind, self.wh, self.emulator = kind, wh, emulator

    def q(self, sql: str, params=None):
        return self.wh.query(sql, params)[1]

    def objects(self, dataset: str) -> dict[str, str]:
        """name -> TABLE or VIEW in a dataset (a DuckDB schema), leaving out the derived views
        (views.py; tested in test_derived_views_give_the_same_rows_on_both and test_views.py)."""
        if self.kind == "duckdb":
            rows = self.wh.con.execute(
                "SELECT table_name, 'TABLE' FROM duckdb_tables() WHERE schema_name = ? UNION ALL "
                "SELECT view_name, 'VIEW' FROM duckdb_views() WHERE schema_name = ?", [dataset, dataset]).fetchall()
            return {name: kind for name, kind in rows if name not in VIEW_NAMES}
        from google.api_core.exceptions import NotFound

        try:
            return {t.table_id: t.table_type for t in self.wh.client.list_tables(f"{self.wh.project}.{dataset}")
                    if t.table_id not in VIEW_NAMES}
        except NotFound:
            return {}

    def insert_raw(self, table: str, rows: list[dict]) -> None:
        """Rows straight into a base table, past the loader (to make duplicates on purpose)."""
        if self.kind == "duckdb":
            for r in rows:
                cols = ", ".join(r)
                self.wh.con.execute(f"INSERT INTO {DATASET}.{table} ({cols}) VALUES ({', '.join('?' * len(r))})",
                                    list(r.values()))
        else:
            assert self.wh.client.insert_rows_json(f"{self.wh.project}.{DATASET}.{table}", rows,
                                                   row_ids=[None] * len(rows)) == []


@pytest.fixture(params=["duckdb", "bigquery"])
def wh(request, tmp_path, monkeypatch):
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_RETRY_S", "10")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "1")
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "3")
    if request.param == "duckdb":
        warehouse = open_warehouse(f"duckdb://{tmp_path / 'wh.duckdb'}")
        emulator = None
    else:
        url = request.getfixturevalue("bq_warehouse_url")
        emulator = request.getfixturevalue("bq_emulator")
        warehouse = open_warehouse(url)
    yield WH(request.param, warehouse, emulator)
    warehouse.close()


def load(store, wh: WH, *keys):
    return Loader(store, wh.wh).load_keys(list(keys))


def as_json(value):
    """JSON columns read back as text on both (BigQuery's client may also parse them)."""
    return json.loads(value) if isinstance(value, str) else value


# --- tables, views, layout ------------------------------------------------------------


def test_tables_and_views_are_created_on_first_use(store, wh):
    assert wh.objects(DATASET) == {}
    load(store, wh, put_ping(store, make_ping(CLIENT_A, events=EVENTS)),
         put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request"))
    assert wh.objects(DATASET) == {"baseline_v1": "TABLE", "baseline": "VIEW",
                                   "events_stream_v1": "TABLE", "events_stream": "VIEW",
                                   "deletion_request_v1": "TABLE", "deletion_request": "VIEW"}
    assert {"errors", "deletions"} <= set(wh.objects("_gleanpipe"))
    status = wh.wh.status()
    assert {(t["table"], t["rows"]) for t in status["tables"]} == {
        ("baseline_v1", 0), ("events_stream_v1", 0), ("deletion_request_v1", 1)}  # the client's rows are deleted
    # on BigQuery a deletion is final only after GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S (test_bigquery.py)
    assert status["deletions"] + status["deletions_pending"] == 1


@pytest.mark.parametrize("wh", ["bigquery"], indirect=True)
def test_bigquery_tables_are_partitioned_by_day_and_clustered(store, wh):
    load(store, wh, put_ping(store, make_ping(CLIENT_A, events=EVENTS)))
    client, p = wh.wh.client, wh.wh.project
    for table, clustering in (("baseline_v1", ["normalized_channel", "sample_id"]),
                              ("events_stream_v1", ["category", "name", "sample_id"])):
        t = client.get_table(f"{p}.{DATASET}.{table}")
        assert (t.time_partitioning.type_, t.time_partitioning.field) == ("DAY", "submission_timestamp")
        assert t.clustering_fields == clustering
    view = client.get_table(f"{p}.{DATASET}.baseline")
    assert view.table_type == "VIEW"  # (bqemulator does not return view_query; the views' rows are tested below)
    # the layout comes from the same type tree as DuckDB's: STRUCT -> RECORD, LIST -> REPEATED
    fields = {f.name: f for f in client.get_table(f"{p}.{DATASET}.baseline_v1").schema}
    assert (fields["submission_timestamp"].field_type, fields["sample_id"].field_type) == ("TIMESTAMP", "INTEGER")
    events = fields["events"]
    assert (events.field_type, events.mode) == ("RECORD", "REPEATED")
    extra = {f.name: f for f in events.fields}["extra"]
    assert (extra.mode, [(f.name, f.field_type) for f in extra.fields]) == (
        "REPEATED", [("key", "STRING"), ("value", "STRING")])
    header = {f.name: f for f in {f.name: f for f in fields["metadata"].fields}["header"].fields}
    assert (header["parsed_x_source_tags"].field_type, header["parsed_x_source_tags"].mode) == ("STRING", "REPEATED")


EXPECTED_METRICS = {
    "boolean": {"toolbox_dark_mode_enabled": True},
    "counter": {"toolbox_launch_count": 6},
    "quantity": {"toolbox_window_width": 1280},
    "string": {"toolbox_active_theme": "monokai"},
    "uuid": {"toolbox_install_id": "8d5b2f1e-4c3a-4b2d-9e1f-0a9b8c7d6e5f"},
    "url": {"toolbox_homepage": "https://example.com/x"},
    "text": {"toolbox_notes": "hello\nworld"},
    "datetime": {"toolbox_last_sync_time": "2024-05-17T13:45:12.345+02:00"},
    "string_list": {"toolbox_enabled_plugins": ["git", "lint"]},
    "timespan": {"toolbox_startup_duration": {"time_unit": "millisecond", "value": 1234}},
    "rate": {"toolbox_cache_hit_rate": {"numerator": 7, "denominator": 10}},
    "timing_distribution": {"toolbox_render_time": {"sum": 135174545, "values": [
        {"key": 2097152, "value": 1}, {"key": 15384774, "value": 2}]}},
    "memory_distribution": {"toolbox_heap_usage": {"sum": 7864320, "values": [{"key": 524287, "value": 1}]}},
    "custom_distribution": {"toolbox_batch_sizes": {"sum": 1050, "values": [
        {"key": 1, "value": 1}, {"key": 4, "value": 2}]}},
    "labeled_counter": {"toolbox_tool_used": [{"key": "hammer", "value": 2}, {"key": "pliers", "value": 1}]},
    "labeled_boolean": {"toolbox_feature_on": [{"key": "a", "value": True}, {"key": "b", "value": False}]},
    "labeled_string": {"toolbox_choice": [{"key": "x", "value": "y"}]},
    "labeled_quantity": {"toolbox_sizes": [{"key": "s", "value": 3}]},
    "labeled_rate": {"toolbox_hits": [{"key": "l1", "value": {"numerator": 1, "denominator": 2}}]},
    "labeled_timing_distribution": {"toolbox_load_time_by_tool": [
        {"key": "hammer", "value": {"sum": 10, "values": [{"key": 8, "value": 1}]}}]},
    "labeled_memory_distribution": {"toolbox_mem_by_tool": [
        {"key": "hammer", "value": {"sum": 10, "values": [{"key": 8, "value": 1}]}}]},
    "labeled_custom_distribution": {"toolbox_cd_by_tool": [
        {"key": "hammer", "value": {"sum": 10, "values": [{"key": 8, "value": 1}]}}]},
    "dual_labeled_counter": {"toolbox_clicks": [
        {"key": "hammer", "value": [{"key": "left", "value": 4}, {"key": "right", "value": 1}]}]},
    "object": {"toolbox_open_tabs": [{"id": 1, "title": "Docs"}]},
    "jwe": {"toolbox_secret": "eyJ.a.b.c.d"},
}


def test_the_readmes_automation_filter_leaves_out_tagged_pings(store, wh):
    """README ("Where the tables differ from Mozilla's"): the views keep pings tagged `automation`,
    and the README's WHERE clause for each warehouse leaves them out."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("**Where the tables differ from Mozilla's.**", 1)[1].split("\n\n", 1)[0]
    duck, bigquery = re.findall(r"`(WHERE [^`]*)` on (?:DuckDB|BigQuery)", " ".join(section.split()))
    keys = [put_ping(store, make_ping(client), headers={"x_source_tags": tags} if tags else None)
            for client, tags in ((CLIENT_A, "automation"), (CLIENT_B, "ci, automation"), (CLIENT_A, "ci"), (CLIENT_B, None))]
    assert load(store, wh, *keys).inserted == 4
    assert wh.q(f"SELECT count(*) FROM {DATASET}.baseline") == [(4,)]
    kept = wh.q(f"SELECT metadata.header.x_source_tags FROM {DATASET}.baseline {duck if wh.kind == 'duckdb' else bigquery} "
                "ORDER BY 1 NULLS LAST")
    assert kept == [("ci",), (None,)]


def test_every_metric_type_round_trips(store, wh):
    key = put_ping(store, make_ping(CLIENT_A, metrics=FULL_METRICS),
                   headers={"date": "Mon, 23 Nov 2026 08:00:00 GMT", "x_source_tags": "automation, ci"})
    assert load(store, wh, key).inserted == 1
    [(doc, ts, sample, channel, metrics, client, seq, start, tags)] = wh.q(
        f"""SELECT document_id, submission_timestamp, sample_id, normalized_channel, metrics, client_info.client_id,
        ping_info.seq, ping_info.parsed_start_time, metadata.header.parsed_x_source_tags FROM {DATASET}.baseline""")
    assert doc == key.rsplit("/", 1)[1][:-5] and ts == TS and channel == "beta" and client == CLIENT_A
    assert sample == 38 and seq == 0 and tags == ["automation", "ci"]
    assert start == datetime(2026, 11, 22, 12, 34, 25, 443000, tzinfo=timezone.utc)
    metrics["object"]["toolbox_open_tabs"] = as_json(metrics["object"]["toolbox_open_tabs"])
    assert metrics == EXPECTED_METRICS


def test_lists_a_ping_does_not_carry_are_empty_not_null(store, wh):
    """A BigQuery REPEATED column is never NULL; DuckDB stored NULL, so ARRAY_LENGTH(events) was
    NULL locally and 0 on BigQuery, and an AVG over it differed (found comparing the two)."""
    key = put_ping(store, make_ping(CLIENT_A), headers={"date": "Mon, 23 Nov 2026 08:00:00 GMT"})
    assert load(store, wh, key).inserted == 1
    assert wh.q(f"""SELECT ARRAY_LENGTH(events), ARRAY_LENGTH(ping_info.experiments),
                   ARRAY_LENGTH(metadata.header.parsed_x_source_tags), events IS NULL FROM {DATASET}.baseline""") == [
        (0, 0, 0, False)]


def test_a_ping_without_ping_info_has_experiments_empty_and_the_rest_null(store, wh):
    """A ping sent with include_info_sections: false has no ping_info. Before: DuckDB stored the
    whole struct NULL, so ARRAY_LENGTH(ping_info.experiments) was NULL there and 0 on BigQuery."""
    ping = make_ping(CLIENT_A, metrics={"counter": {"toolbox.a": 1}})
    del ping["ping_info"]
    assert load(store, wh, put_ping(store, ping, doc_type="custom")).inserted == 1
    assert wh.q(f"""SELECT ARRAY_LENGTH(ping_info.experiments), ping_info IS NULL, ping_info.seq, ping_info.start_time,
                   ping_info.end_time, ping_info.parsed_start_time, ping_info.parsed_end_time, ping_info.reason,
                   metrics.counter.toolbox_a FROM {DATASET}.custom""") == [
        (0, False, None, None, None, None, None, None, 1)]


def test_a_ping_without_client_info_has_it_null(store, wh):
    """A ping with no client_info (include_info_sections: false) has client_info NULL, as on
    BigQuery, not a struct of NULL fields; nothing pinned it."""
    ping = make_ping(CLIENT_A)
    del ping["client_info"]
    assert load(store, wh, put_ping(store, ping, doc_type="custom")).inserted == 1
    assert wh.q(f"SELECT client_info IS NULL, client_info.client_id, sample_id FROM {DATASET}.custom") == [
        (True, None, None)]


def test_events_stream_rows(store, wh):
    key = put_ping(store, make_ping(CLIENT_A, events=EVENTS), doc_type="events")
    assert load(store, wh, key).events == 2
    doc = key.rsplit("/", 1)[1][:-5]
    got = wh.q(f"""SELECT document_id, event_index, client_id, ping, sample_id, category, name, timestamp,
                  event_timestamp, extra, submission_timestamp, normalized_channel, normalized_os,
                  app_display_version FROM {DATASET}.events_stream ORDER BY event_index""")
    # the ping's own columns too (normalized_*, app_display_version: nothing checked them)
    assert got == [
        (doc, 0, CLIENT_A, "events", 38, "toolbox", "tool_opened", 0,
         datetime(2025, 11, 22, 12, 34, 25, 443000, tzinfo=timezone.utc),
         [{"key": "tool", "value": "hammer"}, {"key": "glean_timestamp", "value": "1763814865443"}], TS,
         "beta", "Linux", "1.2.3"),
        (doc, 1, CLIENT_A, "events", 38, "toolbox", "tool_closed", 1500, None, [], TS, "beta", "Linux", "1.2.3"),
    ]
    [(events,)] = wh.q(f"SELECT events FROM {DATASET}.events")
    assert [(e["category"], e["name"], e["timestamp"]) for e in events] == [
        ("toolbox", "tool_opened", 0), ("toolbox", "tool_closed", 1500)]


def test_loading_again_leaves_one_row_in_the_views(store, wh):
    """DuckDB inserts exactly once. On BigQuery the insertId (document_id, and document_id/index
    per event) makes BigQuery drop a retry within its dedupe window; bqemulator does no insertId
    dedupe, so there the base table keeps every copy and the views must hide them. The insertIds
    sent are checked on the real client call."""
    calls = []
    if wh.kind == "bigquery":
        real = wh.wh.client.insert_rows_json

        def spy(table, rows, row_ids=None, **kw):  # passes through to the emulator
            calls.append((str(table).rsplit(".", 1)[1], list(row_ids)))
            return real(table, rows, row_ids=row_ids, **kw)

        wh.wh.client.insert_rows_json = spy
    key = put_ping(store, make_ping(CLIENT_A, events=EVENTS))
    for _ in range(3):
        load(store, wh, key)
    doc = key.rsplit("/", 1)[1][:-5]
    assert wh.q(f"SELECT document_id FROM {DATASET}.baseline") == [(doc,)]
    assert wh.q(f"SELECT document_id, event_index FROM {DATASET}.events_stream ORDER BY 2") == [(doc, 0), (doc, 1)]
    [(copies,)] = wh.q(f"SELECT count(*) FROM {DATASET}.baseline_v1")
    if wh.kind == "duckdb":
        assert copies == 1
    else:
        assert copies == 3  # bqemulator: no insertId dedupe (real BigQuery would keep 1)
        assert calls == [("baseline_v1", [doc]), ("events_stream_v1", [f"{doc}/0", f"{doc}/1"])] * 3


@pytest.mark.parametrize("wh", ["duckdb"], indirect=True)
def test_duckdb_inserts_a_documents_events_once(store, wh):
    """Loading an object again adds no events_stream_v1 row (the base table, not the view) and
    counts no event."""
    key = put_ping(store, make_ping(CLIENT_A, events=EVENTS), doc_type="events")
    assert load(store, wh, key).events == 2
    again = load(store, wh, key)
    assert (again.inserted, again.duplicates, again.events) == (0, 1, 0)
    doc = key.rsplit("/", 1)[1][:-5]
    assert wh.q(f"SELECT document_id, event_index FROM {DATASET}.events_stream_v1 ORDER BY 2") == [(doc, 0), (doc, 1)]


def test_the_first_row_of_a_document_id_within_a_batch_is_kept_and_the_other_counted(store, wh):
    """Apps `org.example.toolbox` and `org-example-toolbox` share a dataset, so one document id can
    come in one batch under two keys with different bodies: the first row of the batch is kept,
    as a later batch would keep the row already loaded, and the other counts as a duplicate (it
    counted as nothing: replay's "N objects: inserted .., duplicates .." did not add up to N)."""
    doc = str(uuid.uuid4())
    keys = []
    for seq, app in ((1, "org-example-toolbox"), (2, "org.example.toolbox")):
        path = DocumentPath(app, "baseline", "1", doc)
        meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "headers": {}, "app_id": app,
                "doc_type": "baseline", "version": "1", "document_id": doc, "key": path.key}
        assert store.put_new(path.key, rawobject.encode(meta, json.dumps(make_ping(CLIENT_A, seq=seq)).encode()))
        keys.append(path.key)
    result = load(store, wh, *keys)
    assert (result.inserted, result.duplicates, result.errors) == (1, 1, 0)
    assert wh.q(f"SELECT document_id, ping_info.seq, metadata.app_id FROM {DATASET}.baseline_v1") == [
        (doc, 1, "org-example-toolbox")]


def test_view_returns_the_first_row_per_document_id(store, wh):
    """Duplicates put straight into the base tables (as a streaming retry past BigQuery's dedupe
    window leaves them): the views return the earliest row of each document_id, and of each
    (document_id, event_index) for events_stream."""
    key = put_ping(store, make_ping(CLIENT_A, events=EVENTS[:1]))
    load(store, wh, key)
    doc = key.rsplit("/", 1)[1][:-5]
    later = "2026-11-23T09:00:00+00:00"
    wh.insert_raw("baseline_v1", [{"document_id": doc, "submission_timestamp": later, "normalized_channel": "copy"},
                                  {"document_id": doc, "submission_timestamp": later, "normalized_channel": "copy"}])
    wh.insert_raw("events_stream_v1", [{"document_id": doc, "event_index": 0, "submission_timestamp": later,
                                        "category": "copy"}])
    assert wh.q(f"SELECT count(*) FROM {DATASET}.baseline_v1") == [(3,)]
    assert wh.q(f"SELECT document_id, normalized_channel, submission_timestamp FROM {DATASET}.baseline") == [
        (doc, "beta", TS)]
    assert wh.q(f"SELECT category, submission_timestamp FROM {DATASET}.events_stream") == [("toolbox", TS)]


# --- schema evolution -----------------------------------------------------------------


def test_new_metrics_widen_the_table(store, wh):
    """DuckDB: end to end, old rows read NULL. bqemulator's update_table changes only metadata
    (inserts into a widened table fail there), so for BigQuery this checks the exact schema sent
    to update_table (read back with get_table) and that an unchanged schema sends nothing; the
    insert after a widening is only shown on DuckDB."""
    load(store, wh, put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.a": 1}})))
    wider = make_ping(CLIENT_B, metrics={"counter": {"toolbox.b": 2}, "labeled_counter": {"toolbox.l": {"x": 1}}})
    if wh.kind == "duckdb":
        load(store, wh, put_ping(store, wider))
        assert wh.q(f"""SELECT client_info.client_id, metrics.counter.toolbox_a, metrics.counter.toolbox_b,
                    metrics.labeled_counter.toolbox_l FROM {DATASET}.baseline ORDER BY 2 NULLS LAST""") == [
            (CLIENT_A, 1, None, None), (CLIENT_B, None, 2, [{"key": "x", "value": 1}])]
        return
    from gleanpipe.table_schema import PING_COLUMNS, metrics_struct
    from gleanpipe.warehouse.bigquery import schema_of

    client, ref = wh.wh.client, f"{wh.wh.project}.{DATASET}.baseline_v1"
    sent = []
    real = client.update_table
    client.update_table = lambda t, fields, **kw: sent.append([f.to_api_repr() for f in t.schema]) or real(
        t, fields, **kw)
    want = schema_of(PING_COLUMNS + (("metrics", metrics_struct({"counter": {"toolbox_b"},
                                                                "labeled_counter": {"toolbox_l"}})),))
    for _ in range(2):  # the second time there is nothing to add
        wh.wh._ensure_table(DATASET, "baseline_v1", want, partition="submission_timestamp", clustering=None)
    assert len(sent) == 1
    metrics = {f.name: f for f in client.get_table(ref).schema}["metrics"]
    shape = {f.name: [(g.name, g.field_type, g.mode) for g in f.fields] for f in metrics.fields}
    assert shape == {
        "counter": [("toolbox_a", "INTEGER", "NULLABLE"), ("toolbox_b", "INTEGER", "NULLABLE")],
        "labeled_counter": [("toolbox_l", "RECORD", "REPEATED")],
    }
    assert [f.name for f in client.get_table(ref).schema][:len(PING_COLUMNS)] == [n for n, _ in PING_COLUMNS]


def test_widen_adds_nested_fields_and_keeps_existing_ones():
    from gleanpipe.warehouse.bigquery import widen

    have = [{"name": "a", "type": "STRING", "mode": "NULLABLE"},
            {"name": "m", "type": "RECORD", "mode": "NULLABLE", "fields": [
                {"name": "counter", "type": "RECORD", "mode": "NULLABLE", "fields": [
                    {"name": "x", "type": "INTEGER", "mode": "NULLABLE"}]}]}]
    want = [{"name": "a", "type": "INTEGER", "mode": "NULLABLE"},  # a type change is never sent
            {"name": "m", "type": "RECORD", "mode": "NULLABLE", "fields": [
                {"name": "counter", "type": "RECORD", "mode": "NULLABLE", "fields": [
                    {"name": "y", "type": "INTEGER", "mode": "NULLABLE"}]},
                {"name": "string", "type": "RECORD", "mode": "NULLABLE", "fields": [
                    {"name": "s", "type": "STRING", "mode": "NULLABLE"}]}]}]
    assert widen(have, want) == [
        {"name": "a", "type": "STRING", "mode": "NULLABLE"},
        {"name": "m", "type": "RECORD", "mode": "NULLABLE", "fields": [
            {"name": "counter", "type": "RECORD", "mode": "NULLABLE", "fields": [
                {"name": "x", "type": "INTEGER", "mode": "NULLABLE"},
                {"name": "y", "type": "INTEGER", "mode": "NULLABLE"}]},
            {"name": "string", "type": "RECORD", "mode": "NULLABLE", "fields": [
                {"name": "s", "type": "STRING", "mode": "NULLABLE"}]}]}]
    assert widen(have, have) is None
    assert widen(have, [have[0]]) is None  # fields the table has and the row does not: nothing to do


# --- deletions and errors ---------------------------------------------------------------


def test_deletion_request_deletes_the_client_and_skips_late_pings(store, wh):
    load(store, wh, put_ping(store, make_ping(CLIENT_A, events=EVENTS)),
         put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.a": 1}}), doc_type="metrics"),
         put_ping(store, make_ping(CLIENT_B, events=EVENTS)))
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    assert load(store, wh, deletion).deletions == 1
    assert wh.q(f"SELECT client_info.client_id FROM {DATASET}.baseline") == [(CLIENT_B,)]
    assert wh.q(f"SELECT count(*) FROM {DATASET}.metrics") == [(0,)]
    assert wh.q(f"SELECT DISTINCT client_id FROM {DATASET}.events_stream") == [(CLIENT_B,)]
    assert wh.q(f"SELECT client_info.client_id FROM {DATASET}.deletion_request") == [(CLIENT_A,)]
    if wh.kind == "bigquery":  # final after the settle time (3 s here), by a `gleanpipe deletions` run
        time.sleep(3.1)
        [attempt] = wh.wh.retry_deletions()
        assert (attempt.client_id, attempt.done, attempt.rows_deleted) == (CLIENT_A, True, 0)
    [(dataset, client, doc, rows_deleted, executed, attempts, error)] = wh.q(
        "SELECT dataset, client_id, document_id, rows_deleted, executed_at IS NOT NULL, attempts, last_error "
        "FROM _gleanpipe.deletions")
    assert (dataset, client, doc, rows_deleted, executed, error) == (
        DATASET, CLIENT_A, deletion.rsplit("/", 1)[1][:-5], 4, True, None)
    assert attempts == (1 if wh.kind == "duckdb" else 2)
    late = load(store, wh, put_ping(store, make_ping(CLIENT_A, seq=7)))
    assert (late.skipped_deleted, late.inserted) == (1, 0)
    assert wh.q(f"SELECT count(*) FROM {DATASET}.baseline WHERE client_info.client_id = ?", [CLIENT_A]) == [(0,)]
    assert wh.wh.retry_deletions() == []  # nothing pending


def test_object_that_cannot_load_goes_to_the_errors_table_until_it_loads(store, wh):
    path = DocumentPath("org-example-toolbox", "baseline", "1", str(uuid.uuid4()))
    store.put_new(path.key, b"this is not a raw object")
    result = load(store, wh, path.key)
    assert (result.errors, result.inserted) == (1, 0)
    [(key, app, doc_type, doc, etype, message)] = wh.q(
        "SELECT object_key, app_id, doc_type, document_id, error_type, error_message FROM _gleanpipe.errors")
    assert (key, app, doc_type, doc, etype) == (path.key, "org-example-toolbox", "baseline", path.document_id,
                                                "raw_object")
    assert "no metadata line" in message
    assert wh.wh.status()["load_errors"] == {"raw_object": 1}
    # the object is fixed in the store (as after a bug fix and a replay): it loads, its error goes
    (store.root / path.key).unlink()
    put_ping(store, make_ping(CLIENT_A), document_id=path.document_id)
    assert load(store, wh, path.key).inserted == 1
    assert wh.q("SELECT count(*) FROM _gleanpipe.errors") == [(0,)]


def put_with_time(store, doc_type: str, ts) -> str:
    """A raw object whose metadata line holds ``ts`` as its submission_timestamp (None: no such field;
    bytes: that JSON text, which orjson may not write itself)."""
    path = DocumentPath("org-example-toolbox", doc_type, "1", str(uuid.uuid4()))
    meta = {"uri": f"/submit/org-example-toolbox/{doc_type}/1/{path.document_id}", "headers": {},
            "app_id": path.app_id, "doc_type": doc_type, "version": "1", "document_id": path.document_id,
            "key": path.key}
    if ts is not None:
        meta["submission_timestamp"] = "@TS@" if isinstance(ts, bytes) else ts
    data = rawobject.encode(meta, json.dumps(make_ping(CLIENT_A)).encode())
    assert store.put_new(path.key, data.replace(b'"@TS@"', ts, 1) if isinstance(ts, bytes) else data)
    return path.key


@pytest.mark.parametrize("ts,says", [
    (None, "the metadata has no submission_timestamp"),
    (1764000000, "the metadata's submission_timestamp is not a timestamp with a UTC offset: 1764000000"),
    ("2026-11-23T08:00:00", 'the metadata\'s submission_timestamp is not a timestamp with a UTC offset: '
                            '"2026-11-23T08:00:00"'),
    # a point in time before 0001-01-01 UTC (or after 9999-12-31): BigQuery's loader raised OverflowError
    # on such a deletion request (its MERGE's TIMESTAMP parameter), a 500 the trigger retried for a day
    ("0001-01-01T00:30:00+01:00", "the metadata's submission_timestamp is before 0001-01-01 or after 9999-12-31 "
                                  "in UTC: 0001-01-01T00:30:00+01:00"),
    # nested deeper than orjson writes: its error message raised TypeError out of the load
    (b"[" * 300 + b"]" * 300, "the metadata's submission_timestamp is not a timestamp with a UTC offset: "
                              "a JSON array nested too deep to show")])
def test_an_object_whose_metadata_has_no_usable_time_is_a_load_error_and_a_deletion_still_deletes(store, wh, ts, says):
    """Objects not written by the edge (by hand, by another tool) may lack the submission time or
    hold something else there. Before: no time at all loaded a row with a NULL submission_timestamp
    (outside every day's partition, first in every dedup view) on both warehouses; and BigQuery's
    loader failed on a deletion request with anything but a string there (AttributeError: an
    exception the trigger retried for a day, the deletion never recorded, no load error)."""
    load(store, wh, put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_B)))
    baseline = put_with_time(store, "baseline", ts)
    result = load(store, wh, baseline)
    assert (result.inserted, result.errors) == (0, 1)
    assert wh.q(f"SELECT count(*) FROM {DATASET}.baseline_v1 WHERE submission_timestamp IS NULL") == [(0,)]
    deletion = put_with_time(store, "deletion-request", ts)
    result = load(store, wh, deletion)
    assert (result.deletions, result.errors) == (1, 1)
    assert wh.q(f"SELECT client_info.client_id FROM {DATASET}.baseline") == [(CLIENT_B,)]
    assert wh.q("SELECT client_id, requested_at IS NOT NULL FROM _gleanpipe.deletions") == [(CLIENT_A, True)]
    assert sorted(wh.q("SELECT object_key, error_type, error_message FROM _gleanpipe.errors")) == sorted([
        (baseline, "raw_object", says),
        (deletion, "raw_object", f"{says} (the deletion was carried out all the same, from the client id alone)")])


@pytest.mark.parametrize("wh", ["duckdb"], indirect=True)
def test_duckdb_records_an_object_that_fails_again_once(store, wh):
    """An object that cannot load, loaded twice: one row in _gleanpipe.errors, counted once."""
    path = DocumentPath("org-example-toolbox", "baseline", "1", str(uuid.uuid4()))
    store.put_new(path.key, b"this is not a raw object")
    for _ in range(2):
        assert (lambda r: (r.errors, r.inserted))(load(store, wh, path.key)) == (1, 0)
    assert wh.q("SELECT object_key, error_type FROM _gleanpipe.errors") == [(path.key, "raw_object")]
    assert wh.wh.status()["load_errors"] == {"raw_object": 1}


class CountingWrites:
    """The warehouse under test, counting the loader's writes (each one a transaction or request)."""

    def __init__(self, wh):
        self.wh, self.writes = wh, 0

    def write(self, rows, errors):
        self.writes += 1
        return self.wh.write(rows, errors)


def test_rows_the_warehouse_refuses_are_found_by_halving_the_batch(store, wh):
    """Before: one refused row made the loader write its whole batch (up to 1,000 pings) again one
    row per transaction, about 7 ms each on DuckDB: 3,000 pings with 10 such rows among them took
    10x as long to load. Now the refused half is halved again, down to the refused rows. (A string
    counter gets past the transform when the raw object did not go through the schema, as from an
    older or custom schema; both warehouses refuse it.)"""
    bad_at = {9, 40}
    keys = [put_ping(store, make_ping(CLIENT_A, seq=i, metrics={"counter": {"toolbox.n": "many" if i in bad_at else i}}),
                     doc_type="metrics") for i in range(64)]
    broken = DocumentPath("org-example-toolbox", "metrics", "1", str(uuid.uuid4()))
    store.put_new(broken.key, b"this is not a raw object")  # an error found before the write: recorded once
    if wh.kind == "bigquery":  # bqemulator answers a bad value with a 500, not BigQuery's per-row refusal
        refuse_rows(wh.wh, {keys[i].rsplit("/", 1)[1][:-5] for i in bad_at},
                    "Cannot convert value to integer (bad value): many")
    counting = CountingWrites(wh.wh)
    result = Loader(store, counting).load_keys([*keys, broken.key])
    assert (result.inserted, result.errors) == (62, 3)
    # the whole batch, then two halvings of 64 rows per refused row (2 x 6 levels x 2 halves at most),
    # and one write for each refused row's error; one row at a time took 1 + 64 + 2 writes
    assert counting.writes <= 1 + 2 * 6 * 2 + 2, counting.writes
    assert wh.q(f"SELECT ping_info.seq FROM {DATASET}.metrics ORDER BY 1") == [
        (i,) for i in range(64) if i not in bad_at]
    assert wh.q(f"SELECT count(*) FROM {DATASET}.metrics WHERE metrics.counter.toolbox_n <> ping_info.seq") == [(0,)]
    errors = wh.q("SELECT object_key, error_type FROM _gleanpipe.errors")
    assert sorted(errors) == sorted([(keys[9], "warehouse"), (keys[40], "warehouse"), (broken.key, "raw_object")])


def test_a_metric_id_that_makes_no_column_or_one_in_another_case_goes_to_additional_properties(store, wh):
    """Before: a counter ``a-b.c`` (column ``a-b_c``, not a safe identifier: ValueError) or
    ``a.b`` with ``A.b`` in one ping (DuckDB and BigQuery names ignore case: the column twice,
    BinderException) failed the whole write with an error that is not a row's, so the loader
    tried the same batch for ever. The schema refuses such ids; a looser GLEANPIPE_SCHEMA_PATH or
    a replay of older raw objects gets them here. Now the first loads into additional_properties,
    the second fills ``a_b`` with the first id and keeps the other aside, as for ``a.b``/``a_b``;
    the other pings of the batch load with them."""
    keys = [put_ping(store, make_ping(CLIENT_A, seq=seq, metrics={"counter": counters}))
            for seq, counters in enumerate([{"toolbox.n": 0}, {"toolbox.n": 1, "a-b.c": 3},
                                            {"toolbox.n": 2, "a.b": 4, "A.b": 5}, {"toolbox.n": 3}])]
    result = load(store, wh, *keys)
    assert (result.inserted, result.errors) == (4, 0)
    sql = (f"SELECT ping_info.seq, metrics.counter.toolbox_n, metrics.counter.a_b, additional_properties "
           f"FROM {DATASET}.baseline ORDER BY 1")
    assert [(seq, n, a_b, as_json(extra)) for seq, n, a_b, extra in wh.q(sql)] == [
        (0, 0, None, None), (1, 1, None, {"metrics": {"counter": {"a-b.c": 3}}}),
        (2, 2, 4, {"metrics": {"counter": {"A.b": 5}}}), (3, 3, None, None)]
    # lower-cased column names: ``A.b`` alone, in a later ping, fills the same column
    assert load(store, wh, put_ping(store, make_ping(CLIENT_A, seq=4, metrics={"counter": {"A.b": 6}}))).inserted == 1
    assert wh.q(f"SELECT metrics.counter.a_b, additional_properties FROM {DATASET}.baseline "
                "WHERE ping_info.seq = 4") == [(6, None)]
    assert wh.q("SELECT count(*) FROM _gleanpipe.errors") == [(0,)]


@pytest.mark.parametrize("wh", ["duckdb"], indirect=True)
def test_a_column_duckdb_refuses_by_name_is_the_rows_load_error_and_the_batch_loads(store, wh, tmp_path):
    """A table an older gleanpipe made has ``A_b`` (from a ping with ``A.b``, its id kept in its
    case then); a ping with ``a.b`` now wants ``a_b``, a second name for that field in DuckDB
    (BinderException). Before: that error was not a row's, the loader tried the batch for ever.
    Now it is the ping's load error, found by halving, and the rest of the batch loads."""
    load(store, wh, put_ping(store, make_ping(CLIENT_A, seq=0, metrics={"counter": {"toolbox.n": 0}})))
    wh.wh.close()
    import duckdb

    con = duckdb.connect(str(tmp_path / "wh.duckdb"))  # the older table, made here
    con.execute(f'ALTER TABLE {DATASET}.baseline_v1 ALTER COLUMN metrics TYPE '
                'STRUCT(counter STRUCT(toolbox_n BIGINT, "A_b" BIGINT))')
    con.close()
    wh.wh = open_warehouse(f"duckdb://{tmp_path / 'wh.duckdb'}")
    keys = [put_ping(store, make_ping(CLIENT_A, seq=seq, metrics={"counter": counters}))
            for seq, counters in enumerate([{"toolbox.n": 1}, {"toolbox.n": 2, "a.b": 7}, {"toolbox.n": 3}], 1)]
    result = load(store, wh, *keys)
    assert (result.inserted, result.errors) == (2, 1)
    assert wh.q(f"SELECT ping_info.seq FROM {DATASET}.baseline ORDER BY 1") == [(0,), (1,), (3,)]
    [(key, etype, message)] = wh.q("SELECT object_key, error_type, error_message FROM _gleanpipe.errors")
    assert (key, etype) == (keys[1], "warehouse")
    assert "a_b" in message, message
    # a column name quote_ident refuses is the row's too (the transform keeps such ids aside, so
    # this row is made by hand from a transformed one: no ping gets there any more)
    import dataclasses

    from gleanpipe.transform import transform

    keys = [put_ping(store, make_ping(CLIENT_A, seq=seq, metrics={"counter": {"toolbox.n": seq}})) for seq in (4, 5)]
    rows = [transform(k, store.get(k)) for k in keys]
    rows[0] = dataclasses.replace(rows[0], metrics={"counter": ("toolbox_n", "a-b_c")})
    result = Loader(store, wh.wh)._write(rows, [])
    assert (result.inserted, result.errors) == (1, 1)
    assert wh.q(f"SELECT ping_info.seq FROM {DATASET}.baseline ORDER BY 1") == [(0,), (1,), (3,), (5,)]
    assert wh.q("SELECT error_message FROM _gleanpipe.errors WHERE object_key = ?", [keys[0]]) == [
        ("not a safe identifier: 'a-b_c'",)]


def test_an_integer_its_column_cannot_hold_as_sent_is_a_load_error_naming_the_field(store, wh):
    """orjson reads an integer past 64 bits as a rounded float (the transform reads such a ping again
    with its integers as sent: transform.exact_integers). Before: a counter of -2**63 - 1 was
    stored as -2**63 without any error, and a value past BIGINT (2**63 in a counter, a seq, an event
    timestamp) made the warehouse refuse the ping's whole batch. Now the transform refuses the ping
    (its raw object is kept, as for other load errors), and the rest of the batch goes in at once."""
    fits = {"counter": {"toolbox.lo": -2**63, "toolbox.hi": 2**63 - 1, "toolbox.float": 1e3}}
    good = put_ping(store, make_ping(CLIENT_A, metrics=fits), doc_type="metrics")
    bad = {
        "metrics.counter.toolbox.n: -9223372036854775809 is outside the 64-bit integer range": {
            "metrics": {"counter": {"toolbox.n": -2**63 - 1}}},
        "metrics.counter.toolbox.n: 9223372036854775808 is outside the 64-bit integer range": {
            "metrics": {"counter": {"toolbox.n": 2**63}}},
        "metrics.labeled_counter.toolbox.by_tool['saw']: -9223372036854775809 is outside the 64-bit integer range": {
            "metrics": {"labeled_counter": {"toolbox.by_tool": {"hammer": 1, "saw": -2**63 - 1}}}},
        "metrics.custom_distribution.toolbox.sizes.values key: 99999999999999999999 is outside": {
            "metrics": {"custom_distribution": {"toolbox.sizes": {"sum": 1, "values": {"99999999999999999999": 1}}}}},
        # 19 digits, as INT64_MAX has: past the transform's count of digits, to int64's own check of the key
        "metrics.memory_distribution.toolbox.heap.values key: 9223372036854775808 is outside": {
            "metrics": {"memory_distribution": {"toolbox.heap": {"sum": 1, "values": {"9223372036854775808": 1}}}}},
        "metrics.labeled_memory_distribution.toolbox.heap['b'].values key: 9223372036854775808 is outside": {
            "metrics": {"labeled_memory_distribution": {"toolbox.heap": {
                "a": {"sum": 1, "values": {"1": 1}}, "b": {"sum": 1, "values": {"9223372036854775808": 1}}}}}},
        # 4,300 digits or more: int() failed with "Exceeds the limit ... use sys.set_int_max_str_digits()". The
        # label is named, as for a key of 19 digits (before: "toolbox.t.values key", a field a labeled one has not)
        "metrics.labeled_timing_distribution.toolbox.t['a'].values key: 10000000000000000000... (5000 digits) is outside "
        "the 64-bit integer range (-9223372036854775808 to 9223372036854775807)": {
            "metrics": {"labeled_timing_distribution": {"toolbox.t": {"a": {"sum": 1, "values": {"1" + "0" * 4999: 1}}}}}},
        "metrics.rate.toolbox.hits.denominator: 1.5 is not a whole number": {
            "metrics": {"rate": {"toolbox.hits": {"numerator": 1, "denominator": 1.5}}}},
        "ping_info.seq: 9223372036854775808 is outside": {"seq": 2**63},
        "events[1].timestamp: 18446744073709551615 is outside": {
            "events": [EVENTS[0], {**EVENTS[1], "timestamp": 2**64 - 1}]},
    }
    keys = {put_ping(store, make_ping(CLIENT_B, **fields), doc_type="metrics"): message
            for message, fields in bad.items()}
    counting = CountingWrites(wh.wh)
    result = Loader(store, counting).load_keys([good, *keys])
    assert (result.inserted, result.errors, counting.writes) == (1, len(bad), 1)
    assert wh.q(f"SELECT metrics.counter.toolbox_lo, metrics.counter.toolbox_hi, metrics.counter.toolbox_float "
                f"FROM {DATASET}.metrics") == [(-2**63, 2**63 - 1, 1000)]
    errors = {key: (etype, message) for key, etype, message in wh.q(
        "SELECT object_key, error_type, error_message FROM _gleanpipe.errors")}
    assert errors.keys() == keys.keys()
    for key, start in keys.items():
        assert errors[key][0] == "transform" and errors[key][1].startswith(start), errors[key]
        assert (store.root / key).exists()


def test_a_float_from_2_53_on_is_not_an_exact_integer(store, wh):
    """int64.EXACT_FLOAT: a whole float under 2**53 loads as its integer; 2**53 itself is refused
    (from there on a float is not always the integer that was sent)."""
    below = put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.n": float(2**53 - 1)}}), doc_type="metrics")
    at = put_ping(store, make_ping(CLIENT_B, metrics={"counter": {"toolbox.n": float(2**53)}}), doc_type="metrics")
    result = Loader(store, wh.wh).load_keys([below, at])
    assert (result.inserted, result.errors) == (1, 1)
    assert wh.q(f"SELECT metrics.counter.toolbox_n FROM {DATASET}.metrics") == [(2**53 - 1,)]
    assert wh.q("SELECT object_key, error_type, error_message FROM _gleanpipe.errors") == [
        (at, "transform", "metrics.counter.toolbox.n: 9007199254740992.0 is not an exact integer (a JSON integer "
                          "past 64 bits, or a number with an exponent, is read as a rounded float)")]


# --- derived views (views.py) ----------------------------------------------------------------


def test_derived_views_give_the_same_rows_on_both(store, wh):
    """The three derived views, made in each warehouse's own SQL, over the pings of test_views.py
    (every aggregated metric type, two clients, two UTC days). Each table gets all its metrics
    with its first ping: bqemulator widens a table's metadata only (see bq_emulator.py)."""
    from test_views import A, B, DAY1, DAY2, MORE_A, MORE_B, MORE_ROWS, dist, put

    metrics_a = {"quantity": {"toolbox.open_windows": 4}, "boolean": {"toolbox.dark_mode_enabled": True},
                 "labeled_counter": {"toolbox.tool_used": {"hammer": 2, "pliers": 1}},
                 "timing_distribution": {"toolbox.render_time": dist({100: 2, 200: 1}, 400)},
                 "rate": {"toolbox.cache_hit_rate": {"numerator": 3, "denominator": 4}},
                 "dual_labeled_counter": {"toolbox.clicks": {"button": {"left": 2, "right": 1}}},
                 "string": {"toolbox.active_theme": "dark"},
                 "labeled_timing_distribution": {"toolbox.load_time_by_tool": {"saw": dist({10: 3}, 33)}},
                 **MORE_A}
    metrics_b = {"quantity": {"toolbox.open_windows": 8}, "boolean": {"toolbox.dark_mode_enabled": False},
                 "labeled_counter": {"toolbox.tool_used": {"hammer": 5}},
                 "timing_distribution": {"toolbox.render_time": dist({200: 1}, 250)},
                 "rate": {"toolbox.cache_hit_rate": {"numerator": 1, "denominator": 4}},
                 "string": {"toolbox.active_theme": "dark"}, **MORE_B}
    events = [{"category": "toolbox", "name": "tool_opened", "timestamp": i, "extra": {"tool": "saw"}} for i in (1, 2)]
    keys = [put(store, make_ping(A, {"counter": {"toolbox.launch_count": n}}), "baseline", DAY1) for n in (2, 3)]
    keys += [put(store, make_ping(B, {"counter": {"toolbox.launch_count": 5}}), "baseline", DAY1),
             put(store, make_ping(B, {"counter": {"toolbox.launch_count": 7}}), "baseline", DAY2),
             put(store, make_ping(A, metrics_a), "metrics", DAY1), put(store, make_ping(B, metrics_b), "metrics", DAY1),
             put(store, make_ping(A, events=events), "events", DAY2)]
    assert load(store, wh, *keys).inserted == 7

    assert sorted(wh.q(f"SELECT CAST(day AS STRING), clients, pings FROM {DATASET}.daily_active_clients")) == [
        ("2026-11-21", 2, 3), ("2026-11-22", 1, 1)]
    assert wh.q(f"SELECT CAST(day AS STRING), category, name, events, clients FROM {DATASET}.events_daily") == [
        ("2026-11-22", "toolbox", "tool_opened", 2, 1)]
    got = wh.q(f"SELECT metric, label, CAST(day AS STRING), ping_table, metric_type, pings, clients, samples, "
               f"sum_value, ROUND(avg_value, 4), min_value, max_value FROM {DATASET}.metric_daily")
    day1, day2 = "2026-11-21", "2026-11-22"
    more = [(m, label, day1, "metrics_v1", *rest) for m, label, *rest in MORE_ROWS]
    assert sorted(got, key=lambda r: (r[0], r[1] or "", r[2])) == sorted(more + [
        # metric, label, day, table, type, pings, clients, samples, sum, avg, min, max
        ("toolbox_active_theme", "dark", day1, "metrics_v1", "string", 2, 2, 2.0, 2.0, 1.0, None, None),
        ("toolbox_cache_hit_rate", None, day1, "metrics_v1", "rate", 2, 2, 8.0, 4.0, 0.5, None, None),
        ("toolbox_clicks", "button/left", day1, "metrics_v1", "dual_labeled_counter", 1, 1, 1.0, 2.0, 2.0, 2.0, 2.0),
        ("toolbox_clicks", "button/right", day1, "metrics_v1", "dual_labeled_counter", 1, 1, 1.0, 1.0, 1.0, 1.0, 1.0),
        ("toolbox_dark_mode_enabled", None, day1, "metrics_v1", "boolean", 2, 2, 2.0, 1.0, 0.5, 0.0, 1.0),
        ("toolbox_launch_count", None, day1, "baseline_v1", "counter", 3, 2, 3.0, 10.0, 3.3333, 2.0, 5.0),
        ("toolbox_launch_count", None, day2, "baseline_v1", "counter", 1, 1, 1.0, 7.0, 7.0, 7.0, 7.0),
        ("toolbox_load_time_by_tool", "saw", day1, "metrics_v1", "labeled_timing_distribution", 1, 1, 3.0, 33.0, 11.0,
         None, None),
        ("toolbox_open_windows", None, day1, "metrics_v1", "quantity", 2, 2, 2.0, 12.0, 6.0, 4.0, 8.0),
        ("toolbox_render_time", None, day1, "metrics_v1", "timing_distribution", 2, 2, 4.0, 650.0, 162.5, None, None),
        ("toolbox_tool_used", "hammer", day1, "metrics_v1", "labeled_counter", 2, 2, 2.0, 7.0, 3.5, 2.0, 5.0),
        ("toolbox_tool_used", "pliers", day1, "metrics_v1", "labeled_counter", 1, 1, 1.0, 1.0, 1.0, 1.0, 1.0),
    ], key=lambda r: (r[0], r[1] or "", r[2]))
    assert {r[4] for r in got} == set(AGGREGATED_TYPES)
    # A new metric widens baseline_v1 and metric_daily is given a part for it.
    assert load(store, wh, put(store, make_ping(A, {"counter": {"toolbox.brand_new": 11}}), "baseline", DAY2)).inserted
    if wh.kind == "duckdb":
        assert wh.q(f"SELECT sum_value FROM {DATASET}.metric_daily WHERE metric = 'toolbox_brand_new'") == [(11.0,)]
    else:  # bqemulator widens a table's metadata only and does not return a view's query: that the
        # view now reads the new column shows as its storage lacking it (real BigQuery reads NULLs)
        from google.api_core.exceptions import BadRequest

        with pytest.raises(BadRequest, match='Could not find key "toolbox_brand_new"'):
            wh.q(f"SELECT sum_value FROM {DATASET}.metric_daily WHERE metric = 'toolbox_brand_new'")


# --- the README's queries -----------------------------------------------------------------


def readme_queries() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [m.group(1) for m in re.finditer(r'```sh\ngleanpipe query "\n(.*?)"\n```', text, re.S)]


def test_readme_queries_run_unchanged_on_both(store, wh):
    """The README's example queries, as printed, against the views of either warehouse."""
    queries = readme_queries()
    assert len(queries) == 3
    ping = lambda c, doc_type="baseline", **kw: put_ping(store, make_ping(c, **kw), doc_type=doc_type)
    load(store, wh, ping(CLIENT_A), ping(CLIENT_B), ping(CLIENT_A, seq=1),
         ping(CLIENT_A, "metrics", metrics={"labeled_counter": {"toolbox.tool_used": {"hammer": 2, "pliers": 1}}}),
         ping(CLIENT_B, "metrics", metrics={"labeled_counter": {"toolbox.tool_used": {"hammer": 1}}}),
         ping(CLIENT_B, "events", events=EVENTS))
    tools, daily, events = (wh.q(sql) for sql in queries)
    assert [(str(day), n) for day, n in daily] == [("2026-11-23", 2)]
    assert tools == [("hammer", 3), ("pliers", 1)]
    assert sorted((str(day), c, n, k) for day, c, n, k in events) == [
        ("2026-11-23", "toolbox", "tool_closed", 1), ("2026-11-23", "toolbox", "tool_opened", 1)]


def test_the_readmes_metric_daily_example_adds_up_a_metric_sent_in_two_pings(store, wh):
    """metric_daily has a row per ping table; the README's example read as duplicates (hammer 2,
    hammer 2) when a metric is sent in two pings. As printed, it sums them, on both warehouses."""
    text = (ROOT / "README.md").read_text()
    sql = re.search(r'gleanpipe query "(SELECT day, label, SUM\(sum_value\).*?)"\n```', text, re.S).group(1)
    used = lambda counts: {"labeled_counter": {"toolbox.tool_used": counts}}
    load(store, wh, put_ping(store, make_ping(CLIENT_A, metrics=used({"hammer": 2})), doc_type="metrics"),
         put_ping(store, make_ping(CLIENT_A, metrics=used({"hammer": 1, "saw": 5})), doc_type="session-summary"))
    assert [(str(day), label, uses) for day, label, uses in wh.q(sql)] == [
        ("2026-11-23", "saw", 5.0), ("2026-11-23", "hammer", 3.0)]


# --- names -------------------------------------------------------------------------------


def test_a_ping_named_events_stream_is_a_load_error_and_the_events_table_keeps_its_rows(store, wh):
    """Its table would be events_stream_v1, which holds every ping's events. Before: refused at
    submit with 400, so the Glean SDK deleted every such ping (glean_parser accepts the name)."""
    events_key = put_ping(store, make_ping(CLIENT_A, events=EVENTS), doc_type="events")
    named = [put_ping(store, make_ping(CLIENT_B, events=EVENTS), doc_type=t) for t in ("events-stream", "events_stream")]
    result = load(store, wh, events_key, *named)
    assert (result.inserted, result.errors, result.events) == (1, 2, 2)
    assert wh.q(f"SELECT DISTINCT client_id FROM {DATASET}.events_stream") == [(CLIENT_A,)]
    assert sorted(wh.q("SELECT object_key, error_type FROM _gleanpipe.errors")) == sorted((k, "reserved") for k in named)


def test_the_views_column_list_follows_a_widened_table(store, tmp_path):
    """DuckDB keeps a view's column list from when it was made: the catalog (information_schema,
    what Datasette and other tools read) did not list `metrics` for the view `baseline` when its
    table got that column after the view was made, until something queried the view."""
    path = tmp_path / "views.duckdb"
    wh = open_warehouse(f"duckdb://{path}")
    try:
        for metrics in (None, {"counter": {"toolbox.launch_count": 1}}):
            assert Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A, metrics=metrics))]).inserted == 1
    finally:
        wh.close()
    import duckdb

    con = duckdb.connect(str(path), read_only=True)  # a fresh connection, as another tool opens it
    columns = lambda name: [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position", [DATASET, name]).fetchall()]
    assert columns("baseline") == columns("baseline_v1") and "metrics" in columns("baseline")
    con.close()


def test_a_ping_named_like_a_table_gets_no_view(store, tmp_path):
    """Ping `foo-v1` has table foo_v1_v1; its view would be foo_v1, the table of ping `foo`."""
    wh = WH("duckdb", open_warehouse(f"duckdb://{tmp_path / 'names.duckdb'}"))
    try:
        load(store, wh, put_ping(store, make_ping(CLIENT_A), doc_type="foo-v1"),
             put_ping(store, make_ping(CLIENT_B), doc_type="foo"))
        assert wh.objects(DATASET) == {"foo_v1_v1": "TABLE", "foo_v1": "TABLE", "foo": "VIEW"}
        assert wh.q(f"SELECT client_info.client_id FROM {DATASET}.foo") == [(CLIENT_B,)]
    finally:
        wh.wh.close()


def test_a_ping_named_like_a_derived_view_gets_no_view(store, wh):
    """Ping `events-daily` has table events_daily_v1; its view would be events_daily, the app's daily
    event counts. Before: the derived view replaced the ping's view, silently (found with the SDK)."""
    load(store, wh, put_ping(store, make_ping(CLIENT_A), doc_type="events-daily"),
         put_ping(store, make_ping(CLIENT_B, events=EVENTS), doc_type="events"))
    from gleanpipe.dictionary.sqlgen import table_ref

    assert wh.objects(DATASET)["events_daily_v1"] == "TABLE"
    # the dictionary's SQL for that ping reads its table, not the app's daily event counts
    assert table_ref(DATASET, "events_daily_v1", "duckdb") == f"{DATASET}.events_daily_v1"
    assert wh.q(f"SELECT client_info.client_id FROM {DATASET}.events_daily_v1") == [(CLIENT_A,)]
    assert sorted(wh.q(f"SELECT category, name, events FROM {DATASET}.events_daily")) == [
        ("toolbox", "tool_closed", 1), ("toolbox", "tool_opened", 1)]


def test_a_duckdb_file_from_before_the_views_is_upgraded(tmp_path):
    """Earlier versions named the per-event table events_stream and made no views: it becomes
    events_stream_v1 with the events_stream view over it, each ping table gets its view, rows kept."""
    import duckdb

    from gleanpipe.table_schema import EVENTS_STREAM_COLUMNS

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    cols = ", ".join(f'"{n}" {t.duckdb()}' for n, t in EVENTS_STREAM_COLUMNS)
    con.execute(f"CREATE SCHEMA {DATASET}; CREATE TABLE {DATASET}.events_stream ({cols})")
    con.execute(f"INSERT INTO {DATASET}.events_stream (document_id, event_index, category) VALUES ('d', 0, 'c')")
    con.execute(f"CREATE TABLE {DATASET}.baseline_v1 (document_id VARCHAR, submission_timestamp TIMESTAMPTZ)")
    con.execute(f"CREATE TABLE {DATASET}.foo_v1_v1 (document_id VARCHAR, submission_timestamp TIMESTAMPTZ)")
    con.execute(f"INSERT INTO {DATASET}.baseline_v1 VALUES ('b', now()), ('b', now() + INTERVAL 1 HOUR)")
    con.close()
    wh = WH("duckdb", open_warehouse(f"duckdb://{path}"))
    try:
        assert wh.objects(DATASET) == {"events_stream_v1": "TABLE", "events_stream": "VIEW", "baseline_v1": "TABLE",
                                       "baseline": "VIEW", "foo_v1_v1": "TABLE"}
        assert wh.q(f"SELECT document_id, category FROM {DATASET}.events_stream") == [("d", "c")]
        assert wh.q(f"SELECT document_id FROM {DATASET}.baseline") == [("b",)]
    finally:
        wh.wh.close()


def test_deletion_records_an_older_version_wrote_twice_become_one(tmp_path):
    """Before 2026-12-04 a replay recorded a deletion request again (and status counted it twice):
    opening the file merges the copies, summing their rows and attempts, keeping the first execution."""
    import duckdb

    path = tmp_path / "old.duckdb"
    wh = open_warehouse(f"duckdb://{path}")  # today's _gleanpipe tables, then rows as the old version left them
    wh.close()
    con = duckdb.connect(str(path))
    rows = [  # dataset, client_id, document_id, executed_at (hour), rows_deleted, attempts, last_error
        ("app", "c1", "d1", 1, 3, 1, None), ("app", "c1", "d1", 5, 0, 1, None),  # carried out, then replayed
        ("app", "c2", "d2", 2, 4, 1, None),  # recorded once
        ("app", "c3", "d3", None, 0, 2, "boom"), ("app", "c3", "d3", None, 0, 1, "boom"),  # pending twice
        ("other", "c1", "d1", 3, 1, 1, None),  # the same document id in another app is another request
        ("app", "c4", None, 4, 2, 1, None), ("app", "c4", None, 4, 2, 1, None),  # no id: not merged
    ]
    for dataset, client, doc, hour, n, attempts, error in rows:
        con.execute("INSERT INTO _gleanpipe.deletions (dataset, client_id, document_id, executed_at, rows_deleted, "
                    "attempts, last_error) VALUES (?, ?, ?, TIMESTAMPTZ '2026-12-01 00:00:00+00' + to_hours(?), ?, ?, ?)",
                    [dataset, client, doc, hour, n, attempts, error])
    con.close()
    wh = open_warehouse(f"duckdb://{path}")
    try:
        assert wh.status()["deletions"] == 5 and wh.status()["deletions_pending"] == 1
        got = wh.con.execute("SELECT dataset, client_id, document_id, hour(executed_at), rows_deleted, attempts, "
                             "last_error FROM _gleanpipe.deletions ORDER BY ALL").fetchall()
        assert got == [("app", "c1", "d1", 1, 3, 2, None), ("app", "c2", "d2", 2, 4, 1, None),
                       ("app", "c3", "d3", None, 0, 3, "boom"), ("app", "c4", None, 4, 2, 1, None),
                       ("app", "c4", None, 4, 2, 1, None), ("other", "c1", "d1", 3, 1, 1, None)]
    finally:
        wh.close()


def test_duckdb_leaves_no_ping_data_in_its_temp_folder(store, tmp_path):
    """Rows go through a temp file for read_json: it is removed after each insert, and the folder
    on close, or at exit for a warehouse nobody closes (a load function keeps its for its life)."""
    import subprocess
    import sys

    wh = open_warehouse(f"duckdb://{tmp_path / 'tmp.duckdb'}")
    folder = wh._tmp
    assert Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A))]).inserted == 1
    assert os.listdir(folder) == []
    wh.close()
    assert not os.path.exists(folder)
    assert not os.path.exists(f"{tmp_path / 'tmp.duckdb'}.load-tmp")  # before: left there, empty
    script = ("import sys; from gleanpipe.warehouse import open_warehouse; "
              "wh = open_warehouse(sys.argv[1]); print(wh._tmp)")
    out = subprocess.run([sys.executable, "-c", script, f"duckdb://{tmp_path / 'unclosed.duckdb'}"],
                         capture_output=True, text=True, timeout=60, check=True)
    left = out.stdout.strip()
    assert left.startswith(f"{tmp_path / 'unclosed.duckdb'}.load-tmp/") and not os.path.exists(left)
    assert not os.path.exists(f"{tmp_path / 'unclosed.duckdb'}.load-tmp") and out.stderr == ""


def test_a_read_only_warehouse_removes_its_own_folder_and_leaves_the_systems_temp_folder(tmp_path):
    """A read-only warehouse (`query`, `status`, `explore` with serve stopped) makes its folder in
    the system's temp folder, and removes only that folder on close: the parent is removed only
    when it is a <file>.load-tmp. Nothing pinned that: removing the parent whenever it was empty
    passed every test, and took away a TMPDIR of the user's own that held nothing else."""
    from conftest import run_cli

    data = tmp_path / "data"
    data.mkdir()
    open_warehouse(f"duckdb://{data / 'warehouse.duckdb'}").close()
    mine = tmp_path / "my-tmp"
    mine.mkdir()
    out = run_cli("query", "--data-dir", str(data), "--format", "csv", "SELECT 1 AS one", env={"TMPDIR": str(mine)})
    assert (out.returncode, out.stdout, out.stderr) == (0, "one\n1\n", "")
    assert mine.is_dir() and os.listdir(mine) == []  # its own folder went, the TMPDIR stays
    assert sorted(os.listdir(data)) == ["warehouse.duckdb"]  # no <file>.load-tmp for a read-only one


def test_closing_one_duckdb_warehouse_leaves_the_temp_folder_of_another(store, tmp_path):
    """Two writers on one file in one process (serve's loader and its admin API, say): each has
    its own folder in <file>.load-tmp/. The first close removes only its own folder, and keeps
    the parent the other one still uses; the last close removes the parent too."""
    path = tmp_path / "w.duckdb"
    first = open_warehouse(f"duckdb://{path}")
    second = open_warehouse(f"duckdb://{path}")
    try:
        assert sorted(os.listdir(f"{path}.load-tmp")) == sorted(os.path.basename(w._tmp) for w in (first, second))
        first.close()
        assert os.listdir(f"{path}.load-tmp") == [os.path.basename(second._tmp)]
        # the other still loads: its rows go through its folder
        assert Loader(store, second).load_keys([put_ping(store, make_ping(CLIENT_A))]).inserted == 1
    finally:
        second.close()
    assert not os.path.exists(f"{path}.load-tmp")
    third = open_warehouse(f"duckdb://{path}")  # and the next writer makes it again
    try:
        assert os.path.dirname(third._tmp) == f"{path}.load-tmp" and os.listdir(third._tmp) == []
    finally:
        third.close()
    assert not os.path.exists(f"{path}.load-tmp")


def test_rows_a_killed_loader_left_are_removed_by_the_next_writer(tmp_path):
    """Before: the folder was in the system's temp folder, so a kill -9 in the middle of an insert
    left that batch's rows (client ids and all) there for good. Now it is beside the file, and the
    next process to open the file for writing clears what other processes left."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "w.duckdb"
    script = ("import os, sys; from gleanpipe.warehouse import open_warehouse; wh = open_warehouse(sys.argv[1]); "
              "open(os.path.join(wh._tmp, 'rows.ndjson'), 'w').write('{}'); print(wh._tmp, flush=True); "
              "sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", script, f"duckdb://{path}"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    left = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)  # as in the middle of an insert
    proc.wait(timeout=10)
    assert os.listdir(left) == ["rows.ndjson"]
    reader = open_warehouse(f"duckdb://{path}", read_only=True)  # a reader does not touch it
    reader.close()
    assert os.path.exists(left)
    wh = open_warehouse(f"duckdb://{path}")
    try:
        assert not os.path.exists(left)
        assert os.listdir(f"{path}.load-tmp") == [os.path.basename(wh._tmp)]
    finally:
        wh.close()
    assert not os.path.exists(f"{path}.load-tmp")


def test_a_full_disk_under_the_duckdb_loader_names_the_file_it_could_not_write(store, tmp_path):
    """The DuckDB loader writes a batch's rows to a file beside the warehouse for read_json. On a
    full disk serve's log and `status` said only "[Errno 28] No space left on device". Now the
    error names the file, and the load is one to retry: no load error is recorded, and the ping
    loads once there is room. A real full disk: a 1 MiB tmpfs, filled by a file."""
    from conftest import fill_disk, small_disk
    from gleanpipe.warehouse import WarehouseUnavailable

    with small_disk(tmp_path) as disk:
        wh = open_warehouse(f"duckdb://{disk / 'warehouse.duckdb'}")
        try:
            key = put_ping(store, make_ping(CLIENT_A))
            fill_disk(disk / "filler")
            with pytest.raises(WarehouseUnavailable, match=r"cannot write the rows to load to .*/rows\.ndjson: "
                                                            r"No space left on device"):
                Loader(store, wh).load_keys([key])
            (disk / "filler").unlink()
            assert Loader(store, wh).load_keys([key]).inserted == 1
            assert wh.query("SELECT count(*) FROM _gleanpipe.errors")[1] == [(0,)]
        finally:
            wh.close()


def wide_pings(fewer: int = 1) -> list[tuple[str, str, dict]]:
    """(client, day, metrics) of four pings of one table with 300 metrics (/ ``fewer``) of seven types;
    the first has them all (bqemulator widens a table's metadata only), the others two in three."""
    from test_views import A, B, DAY1, DAY2, dist

    kinds = {"counter": 120, "quantity": 40, "boolean": 40, "string": 30, "labeled_counter": 30,
             "timing_distribution": 20, "rate": 20}
    value = {
        "counter": lambda i, p: i * 7 + p, "quantity": lambda i, p: i - 3 * p, "boolean": lambda i, p: (i + p) % 2 == 0,
        "string": lambda i, p: f"s{(i + p) % 3}",
        "labeled_counter": lambda i, p: {f"l{j}": i + j + p for j in range((i + p) % 3 + 1)},
        "timing_distribution": lambda i, p: dist({10: i % 4 + 1, 20 * p + 30: 2}, i * 10 + p),
        "rate": lambda i, p: {"numerator": i + p, "denominator": (i * p) % 5},
    }
    pings = []
    for p, (client, day) in enumerate([(A, DAY1), (B, DAY1), (A, DAY1), (B, DAY2)]):
        metrics = {mtype: {f"wide.{mtype[:2]}{i}": value[mtype](i, p) for i in range(n // fewer) if p == 0 or (i + p) % 3}
                   for mtype, n in kinds.items()}
        pings.append((client, day, metrics))
    return pings


def by_hand(pings) -> list[tuple]:
    """metric_daily's rows of ``wide_pings``, computed per metric as the table at the top of
    views.py says: (metric, label, day, type, pings, clients, samples, sum, avg (4 places), min, max)."""
    parts: dict[tuple, list] = {}
    for client, day, metrics in pings:
        for mtype, values in metrics.items():
            for name, val in values.items():
                metric = name.replace(".", "_")
                if mtype == "labeled_counter":
                    items = [(label, v, 1, v) for label, v in val.items()]
                elif mtype == "string":
                    items = [(val, 1, 1, None)]
                elif mtype == "timing_distribution":
                    items = [(None, val["sum"], sum(val["values"].values()), None)]
                elif mtype == "rate":
                    items = [(None, val["numerator"], val["denominator"], None)]
                else:
                    items = [(None, int(val), 1, int(val))]
                for label, v, n, mm in items:
                    parts.setdefault((metric, label, day[:10], mtype), []).append((client, v, n, mm))
    out = []
    for (metric, label, day, mtype), got in parts.items():
        v, n = float(sum(g[1] for g in got)), float(sum(g[2] for g in got))
        mms = [g[3] for g in got if g[3] is not None]
        out.append((metric, label, day, mtype, len(got), len({g[0] for g in got}), n, v,
                    round(v / n, 4) if n else None, float(min(mms)) if mms else None, float(max(mms)) if mms else None))
    return sorted(out, key=lambda r: (r[0], r[1] or "", r[2]))


def test_metric_daily_of_a_table_with_300_metrics_is_one_part_per_metric_type(store, wh):
    """Apps have thousands of metrics: metric_daily was one UNION ALL part per metric, and a ping
    with 1,500 new counters took 11 s to rebuild the views (with the warehouse's lock held) and a
    query of it 13 s. It is one part per ping table and metric type now, which unnests a list of
    (metric, value) structs, and gives each metric the rows computing it alone gives. (60 metrics
    on bqemulator, whose query of the view takes 10 s with 300, more than the fixture waits.)"""
    from gleanpipe.views import BIGQUERY, DUCKDB, build_views
    from test_views import put

    pings = wide_pings(1 if wh.kind == "duckdb" else 5)
    keys = [put(store, make_ping(client, metrics), "metrics", day) for client, day, metrics in pings]
    assert load(store, wh, *keys).inserted == 4
    got = wh.q(f"SELECT metric, label, CAST(day AS STRING), metric_type, pings, clients, samples, sum_value, "
               f"ROUND(avg_value, 4), min_value, max_value FROM {DATASET}.metric_daily WHERE ping_table = 'metrics_v1'")
    want = by_hand(pings)
    assert len(want) > 300 // (1 if wh.kind == "duckdb" else 5) and {r[3] for r in want} == set(pings[0][2])
    assert sorted(got, key=lambda r: (r[0], r[1] or "", r[2])) == want
    columns = [(mtype, name.replace(".", "_")) for mtype, values in wide_pings()[0][2].items() for name in values]
    assert len(columns) == 300
    for d in (DUCKDB, BIGQUERY):  # 7 types: 7 parts, whatever the number of metrics
        assert build_views({"metrics_v1": columns}, lambda t, m: t, d)["metric_daily"].count("UNION ALL") == 6
    if wh.kind == "duckdb":
        (sql,), = wh.q(f"SELECT sql FROM duckdb_views() WHERE schema_name = '{DATASET}' AND view_name = 'metric_daily'")
        assert sql.count("UNION ALL") == 6


@pytest.mark.parametrize("wh", ["bigquery"], indirect=True)
def test_bigquery_metric_daily_lists_together_only_metrics_of_one_value_type(wh):
    """BigQuery's side of test_views' test_metric_daily_lists_together_only_metrics_of_one_value_type:
    a table another tool made, with a counter stored as STRING between two INTEGER ones. metric_daily
    unnests one list per metric type and value type (bigquery.field_type); in one list the view
    was refused, and the app had no metric_daily. No BigQuery test had two value types in one
    metric type; a mutant that listed them together survived (review30). The views are remade
    with the warehouse's own _refresh_views, as after a load that reshapes a table."""
    from google.cloud import bigquery

    client, p = wh.wh.client, wh.wh.project
    client.create_dataset(bigquery.Dataset(f"{p}.{DATASET}"), exists_ok=True)
    counter = [bigquery.SchemaField("a", "INTEGER"), bigquery.SchemaField("b", "STRING"),
               bigquery.SchemaField("c", "INTEGER")]
    schema = [bigquery.SchemaField("document_id", "STRING"), bigquery.SchemaField("submission_timestamp", "TIMESTAMP"),
              bigquery.SchemaField("client_info", "RECORD", fields=[bigquery.SchemaField("client_id", "STRING")]),
              bigquery.SchemaField("metrics", "RECORD", fields=[bigquery.SchemaField("counter", "RECORD", fields=counter)])]
    client.create_table(bigquery.Table(f"{p}.{DATASET}.metrics_v1", schema=schema))
    rows = [{"document_id": f"d{i}", "submission_timestamp": "2026-11-21T10:00:00Z", "client_info": {"client_id": f"c{i}"},
             "metrics": {"counter": {"a": a, "b": str(a), "c": a + 1}}} for i, a in enumerate((9, 10))]
    assert client.insert_rows_json(f"{p}.{DATASET}.metrics_v1", rows) == []
    wh.wh._refresh_views(DATASET)
    got = sorted(wh.q(f"SELECT metric, pings, clients, sum_value, min_value, max_value FROM {DATASET}.metric_daily"))
    assert got[0] == ("a", 2, 2, 19.0, 9.0, 10.0) and got[2] == ("c", 2, 2, 21.0, 10.0, 11.0)
    assert got[1][:4] == ("b", 2, 2, 19.0)  # compared as the text it is, as on DuckDB
