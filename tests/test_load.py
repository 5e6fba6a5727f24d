"""load, in process: hand-built storage CloudEvents through functions-framework, real DuckDB files."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
from functions_framework import create_app

from gleanpipe import rawobject
from gleanpipe.load import Loader
from gleanpipe.naming import DocumentPath
from gleanpipe.storage.local import LocalStore
from gleanpipe.transform import sample_id
from gleanpipe.warehouse import WarehouseUnavailable
from gleanpipe.warehouse.duckdb import DuckDBWarehouse

from conftest import APP, DATASET, ROOT, make_ping

CLIENT_A = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
CLIENT_B = "0b4c2d1e-9f8a-4b7c-8d6e-5f4a3b2c1d0e"


def put_ping(store: LocalStore, ping: dict, doc_type: str = "baseline", document_id: str | None = None,
             headers: dict | None = None, ts: str = "2026-11-23T08:00:00.000000Z", app: str = APP,
             synced: bool = True) -> str:
    """Store ``ping`` as serve would have, durably (put_new); ``synced=False``: put_unsynced, no
    fsync, for tests that need many objects and not their durability."""
    path = DocumentPath(app, doc_type, "1", document_id or str(uuid.uuid4()))
    meta = {"submission_timestamp": ts, "uri": f"/submit/{app}/{doc_type}/1/{path.document_id}",
            "headers": headers or {"date": "Mon, 23 Nov 2026 08:00:00 GMT",
                                   "x_telemetry_agent": "Glean/71.0.0 (python on Linux)"},
            "app_id": app, "doc_type": doc_type, "version": "1", "document_id": path.document_id, "key": path.key}
    put = store.put_new if synced else store.put_unsynced
    assert put(path.key, rawobject.encode(meta, json.dumps(ping).encode()))
    return path.key


def storage_event(name: str, bucket: str = "local") -> tuple[dict, bytes]:
    """A binary-mode CloudEvent as Eventarc delivers google.cloud.storage.object.v1.finalized."""
    headers = {
        "ce-id": str(uuid.uuid4()),
        "ce-specversion": "1.0",
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "ce-subject": f"objects/{name}",
        "ce-time": datetime.now(timezone.utc).isoformat(),
        "Content-Type": "application/json",
    }
    data = {"bucket": bucket, "name": name, "contentType": "application/octet-stream",
            "timeCreated": datetime.now(timezone.utc).isoformat(), "size": "100"}
    return headers, json.dumps(data).encode()


@pytest.fixture
def load_client(fn_env):
    app = create_app(target="load", source=str(ROOT / "functions" / "main.py"), signature_type="cloudevent")
    return app.test_client()


@pytest.fixture
def fn_store(fn_env):
    return LocalStore(fn_env / "store")


def rows(fn_env_or_wh, sql):
    from gleanpipe import functions

    return functions.loader().warehouse.query(sql)[1]


FULL_METRICS = {
    "boolean": {"toolbox.dark_mode_enabled": True},
    "counter": {"toolbox.launch_count": 6},
    "quantity": {"toolbox.window_width": 1280},
    "string": {"toolbox.active_theme": "monokai"},
    "uuid": {"toolbox.install_id": "8d5b2f1e-4c3a-4b2d-9e1f-0a9b8c7d6e5f"},
    "url": {"toolbox.homepage": "https://example.com/x"},
    "text": {"toolbox.notes": "hello\nworld"},
    "datetime": {"toolbox.last_sync_time": "2024-05-17T13:45:12.345+02:00"},
    "string_list": {"toolbox.enabled_plugins": ["git", "lint"]},
    "timespan": {"toolbox.startup_duration": {"time_unit": "millisecond", "value": 1234}},
    "rate": {"toolbox.cache_hit_rate": {"numerator": 7, "denominator": 10}},
    "timing_distribution": {"toolbox.render_time": {"sum": 135174545, "values": {"2097152": 1, "15384774": 2}}},
    "memory_distribution": {"toolbox.heap_usage": {"sum": 7864320, "values": {"524287": 1}}},
    "custom_distribution": {"toolbox.batch_sizes": {"sum": 1050, "values": {"1": 1, "4": 2}}},
    "labeled_counter": {"toolbox.tool_used": {"hammer": 2, "pliers": 1}},
    "labeled_boolean": {"toolbox.feature_on": {"a": True, "b": False}},
    "labeled_string": {"toolbox.choice": {"x": "y"}},
    "labeled_quantity": {"toolbox.sizes": {"s": 3}},
    "labeled_rate": {"toolbox.hits": {"l1": {"numerator": 1, "denominator": 2}}},
    "labeled_timing_distribution": {"toolbox.load_time_by_tool": {"hammer": {"sum": 10, "values": {"8": 1}}}},
    "labeled_memory_distribution": {"toolbox.mem_by_tool": {"hammer": {"sum": 10, "values": {"8": 1}}}},
    "labeled_custom_distribution": {"toolbox.cd_by_tool": {"hammer": {"sum": 10, "values": {"8": 1}}}},
    "dual_labeled_counter": {"toolbox.clicks": {"hammer": {"left": 4, "right": 1}}},
    "object": {"toolbox.open_tabs": [{"id": 1, "title": "Docs"}]},
    "jwe": {"toolbox.secret": "eyJ.a.b.c.d"},
}

EVENTS = [
    {"category": "toolbox", "name": "tool_opened", "timestamp": 0,
     "extra": {"tool": "hammer", "glean_timestamp": "1763814865443"}},
    {"category": "toolbox", "name": "tool_closed", "timestamp": 1500},
]


def test_load_event_writes_one_typed_row(load_client, fn_store):
    key = put_ping(fn_store, make_ping(CLIENT_A, metrics=FULL_METRICS, events=EVENTS),
                   headers={"date": "Mon, 23 Nov 2026 08:00:00 GMT", "x_debug_id": "tag1",
                            "x_source_tags": "automation, ci", "x_telemetry_agent": "Glean/71.0.0"})
    headers, body = storage_event(key)
    resp = load_client.post("/", headers=headers, data=body)
    assert resp.status_code == 200
    cols = ("document_id, sample_id, normalized_channel, normalized_os, normalized_os_version, "
            "client_info.client_id, client_info.locale, ping_info.seq, ping_info.parsed_start_time, "
            "ping_info.parsed_end_time, metadata.header.x_debug_id, metadata.header.parsed_x_source_tags, "
            "metadata.header.parsed_date, submission_timestamp")
    [row] = rows(None, f"SELECT {cols} FROM {DATASET}.baseline_v1")
    import zlib

    assert row[0] == key.rsplit("/", 1)[1][:-5]
    assert row[1] == zlib.crc32(CLIENT_A.encode()) % 100
    assert row[2:5] == ("beta", "Linux", "6.1.0")
    assert row[5:8] == (CLIENT_A, "en-US", 0)
    assert row[8] == datetime(2026, 11, 22, 12, 34, 25, 443000, tzinfo=timezone.utc)
    assert row[9] == datetime(2026, 11, 22, 12, 40, tzinfo=timezone.utc)
    assert row[10:12] == ("tag1", ["automation", "ci"])
    assert row[12] == datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
    assert row[13] == datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


def test_every_metric_type_lands_in_its_typed_column(load_client, fn_store):
    key = put_ping(fn_store, make_ping(CLIENT_A, metrics=FULL_METRICS))
    load_client.post("/", headers=storage_event(key)[0], data=storage_event(key)[1])
    m = "metrics"
    [row] = rows(None, f"""SELECT
        {m}.boolean.toolbox_dark_mode_enabled, {m}.counter.toolbox_launch_count,
        {m}.quantity.toolbox_window_width, {m}.string.toolbox_active_theme, {m}.uuid.toolbox_install_id,
        {m}.url.toolbox_homepage, {m}.text.toolbox_notes, {m}.datetime.toolbox_last_sync_time,
        {m}.string_list.toolbox_enabled_plugins, {m}.timespan.toolbox_startup_duration,
        {m}.rate.toolbox_cache_hit_rate, {m}.timing_distribution.toolbox_render_time,
        {m}.memory_distribution.toolbox_heap_usage.sum, {m}.custom_distribution.toolbox_batch_sizes.values,
        {m}.labeled_counter.toolbox_tool_used, {m}.labeled_boolean.toolbox_feature_on,
        {m}.labeled_string.toolbox_choice, {m}.labeled_quantity.toolbox_sizes, {m}.labeled_rate.toolbox_hits,
        {m}.labeled_timing_distribution.toolbox_load_time_by_tool,
        {m}.labeled_memory_distribution.toolbox_mem_by_tool[1].value.sum,
        {m}.labeled_custom_distribution.toolbox_cd_by_tool[1].key,
        {m}.dual_labeled_counter.toolbox_clicks, {m}.object.toolbox_open_tabs, {m}.jwe.toolbox_secret
        FROM {DATASET}.baseline_v1""")
    assert row[:9] == (True, 6, 1280, "monokai", "8d5b2f1e-4c3a-4b2d-9e1f-0a9b8c7d6e5f", "https://example.com/x",
                       "hello\nworld", "2024-05-17T13:45:12.345+02:00", ["git", "lint"])
    assert row[9] == {"time_unit": "millisecond", "value": 1234}
    assert row[10] == {"numerator": 7, "denominator": 10}
    assert row[11] == {"sum": 135174545, "values": [{"key": 2097152, "value": 1}, {"key": 15384774, "value": 2}]}
    assert row[12] == 7864320
    assert row[13] == [{"key": 1, "value": 1}, {"key": 4, "value": 2}]
    assert row[14] == [{"key": "hammer", "value": 2}, {"key": "pliers", "value": 1}]
    assert row[15] == [{"key": "a", "value": True}, {"key": "b", "value": False}]
    assert row[16] == [{"key": "x", "value": "y"}]
    assert row[17] == [{"key": "s", "value": 3}]
    assert row[18] == [{"key": "l1", "value": {"numerator": 1, "denominator": 2}}]
    assert row[19] == [{"key": "hammer", "value": {"sum": 10, "values": [{"key": 8, "value": 1}]}}]
    assert row[20:22] == (10, "hammer")
    assert row[22] == [{"key": "hammer", "value": [{"key": "left", "value": 4}, {"key": "right", "value": 1}]}]
    assert json.loads(row[23]) == [{"id": 1, "title": "Docs"}]
    assert row[24] == "eyJ.a.b.c.d"


def test_labeled_counter_unnest_query(load_client, fn_store):
    for _ in range(2):
        key = put_ping(fn_store, make_ping(CLIENT_A, metrics={"labeled_counter": FULL_METRICS["labeled_counter"]}))
        load_client.post("/", headers=storage_event(key)[0], data=storage_event(key)[1])
    got = rows(None, f"""SELECT tool.key, SUM(tool.value) FROM {DATASET}.baseline_v1,
                        UNNEST(metrics.labeled_counter.toolbox_tool_used) AS t(tool) GROUP BY 1 ORDER BY 1""")
    assert got == [("hammer", 4), ("pliers", 2)]


def test_events_column_and_events_stream(load_client, fn_store):
    key = put_ping(fn_store, make_ping(CLIENT_A, events=EVENTS), doc_type="events")
    load_client.post("/", headers=storage_event(key)[0], data=storage_event(key)[1])
    [(events,)] = rows(None, f"SELECT events FROM {DATASET}.events_v1")
    assert events[0]["category"] == "toolbox" and events[0]["name"] == "tool_opened"
    assert events[0]["extra"] == [{"key": "tool", "value": "hammer"}, {"key": "glean_timestamp", "value": "1763814865443"}]
    assert events[1]["timestamp"] == 1500 and events[1]["extra"] == []
    stream = rows(None, f"""SELECT event_index, client_id, ping, category, name, timestamp, event_timestamp, extra
                          FROM {DATASET}.events_stream ORDER BY event_index""")
    assert stream[0][:6] == (0, CLIENT_A, "events", "toolbox", "tool_opened", 0)
    assert stream[0][6] == datetime(2025, 11, 22, 12, 34, 25, 443000, tzinfo=timezone.utc)
    assert stream[1][:6] == (1, CLIENT_A, "events", "toolbox", "tool_closed", 1500)
    assert stream[1][6] is None and stream[1][7] == []


def test_loading_the_same_object_twice_leaves_one_row(load_client, fn_store):
    key = put_ping(fn_store, make_ping(CLIENT_A, events=EVENTS))
    for _ in range(3):
        assert load_client.post("/", headers=storage_event(key)[0], data=storage_event(key)[1]).status_code == 200
    assert rows(None, f"SELECT count(*) FROM {DATASET}.baseline_v1") == [(1,)]
    assert rows(None, f"SELECT count(*) FROM {DATASET}.events_stream") == [(2,)]


def test_error_area_and_foreign_objects_are_ignored(load_client, fn_store):
    fn_store.put_new("errors/2026-11-23/json/x.json", b"{}", notify=False)
    fn_store.put_new("something/else.txt", b"hi", notify=False)
    for name in ("errors/2026-11-23/json/x.json", "something/else.txt", "raw/never/written.json"):
        assert load_client.post("/", headers=storage_event(name)[0], data=storage_event(name)[1]).status_code == 200
    from gleanpipe import functions

    assert functions.loader().warehouse.status()["tables"] == []



def test_a_loads_counts_say_how_many_keys_were_ignored_and_how_many_were_missing(store, warehouse):
    """LoadResult.as_dict, what `gleanpipe replay`, serve's admin /load and the load function's log
    give: keys outside raw/ are ignored, a raw key whose object is not there is missing (serve's
    loader keeps its receipt for a while). Nothing told the two counts apart."""
    present = put_ping(store, make_ping(CLIENT_A))
    absent = DocumentPath(APP, "baseline", "1", str(uuid.uuid4())).key
    counts = Loader(store, warehouse).load_keys(
        [present, absent, "errors/2026-11-23/json/x.json", "something/else.txt"]).as_dict()
    assert counts == {"inserted": 1, "duplicates": 0, "skipped_deleted": 0, "events": 0, "deletions": 0, "errors": 0,
                      "ignored": 2, "missing": 1}

def test_object_that_cannot_transform_goes_to_errors_table(load_client, fn_store):
    path = DocumentPath(APP, "baseline", "1", str(uuid.uuid4()))
    fn_store.put_new(path.key, b"this is not a raw object")
    load_client.post("/", headers=storage_event(path.key)[0], data=storage_event(path.key)[1])
    assert rows(None, "SELECT object_key, error_type, document_id FROM _gleanpipe.errors") == [
        (path.key, "raw_object", path.document_id)]


def test_a_row_the_warehouse_refuses_does_not_hold_up_its_batch(store, warehouse):
    """A string counter (a raw object that did not go through today's schema: an older or a custom
    one) gets past the transform and DuckDB refuses it. The batch is loaded again by halves: the
    good rows are inserted, each bad one goes to the errors table with DuckDB's reason, without the
    loader's temp file in it."""
    keys = [put_ping(store, make_ping(CLIENT_A, seq=i, metrics={"counter": {"toolbox.n": n}}), doc_type="metrics")
            for i, n in enumerate([1, "many", 3, "lots", 5])]
    result = Loader(store, warehouse).load_keys(keys)
    assert (result.inserted, result.errors) == (3, 2)
    assert warehouse.query(f"SELECT metrics.counter.toolbox_n FROM {DATASET}.metrics_v1 ORDER BY 1")[1] == [
        (1,), (3,), (5,)]
    errors = warehouse.query("SELECT object_key, error_type, error_message FROM _gleanpipe.errors ORDER BY 3")[1]
    assert [(key, etype) for key, etype, _ in errors] == [(keys[3], "warehouse"), (keys[1], "warehouse")]
    for (_, _, message), value in zip(errors, ["lots", "many"]):
        assert message.endswith(f'Failed to cast value to numerical: "{value}"'), message  # DuckDB's words
        assert "rows.ndjson" not in message and " in line " not in message, message


def test_schema_evolution_adds_columns_and_old_rows_read_null(config, store, warehouse):
    loader = Loader(store, warehouse)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.a": 1}}))])
    loader.load_keys([put_ping(store, make_ping(CLIENT_B, metrics={"counter": {"toolbox.b": 2},
                                                                     "string": {"toolbox.s": "new"}}))])
    got = warehouse.query(f"""SELECT client_info.client_id, metrics.counter.toolbox_a, metrics.counter.toolbox_b,
                              metrics.string.toolbox_s FROM {DATASET}.baseline_v1 ORDER BY 2 NULLS LAST""")[1]
    assert got == [(CLIENT_A, 1, None, None), (CLIENT_B, None, 2, "new")]
    # a table created by a ping with no metrics at all still takes metrics later
    loader.load_keys([put_ping(store, make_ping(CLIENT_A), doc_type="metrics")])
    loader.load_keys([put_ping(store, make_ping(CLIENT_A, metrics={"boolean": {"toolbox.x": True}}),
                               doc_type="metrics")])
    assert warehouse.query(f"SELECT metrics.boolean.toolbox_x FROM {DATASET}.metrics_v1 ORDER BY 1")[1] == [
        (True,), (None,)]
    # and widens again, with that first row's metrics NULL: DuckDB 2.0.1 adding a field under metrics
    # then failed with an INTERNAL error that invalidated the database, and nothing loaded any more
    loader.load_keys([put_ping(store, make_ping(CLIENT_B, metrics={"string": {"toolbox.s": "third"},
                                                                     "boolean": {"toolbox.y": False}}),
                               doc_type="metrics")])
    assert warehouse.query(f"""SELECT metrics.boolean.toolbox_x, metrics.boolean.toolbox_y, metrics.string.toolbox_s
                              FROM {DATASET}.metrics_v1 ORDER BY 1 NULLS FIRST, 2 NULLS FIRST""")[1] == [
        (None, None, None), (None, False, "third"), (True, None, None)]
    assert warehouse.query("SELECT count(*) FROM _gleanpipe.errors")[1] == [(0,)]


def test_a_ping_with_a_thousand_new_metrics_widens_the_table_once(store, warehouse):
    """Each new field used to be its own ALTER (DuckDB rewrites the column for each: 31 s for
    1,000 with the warehouse held); now one widening takes them all."""
    loader = Loader(store, warehouse)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.a": 1}}))])
    many = {f"toolbox.c{i}": i for i in range(1000)}
    result = loader.load_keys([put_ping(store, make_ping(CLIENT_B, metrics={"counter": many,
                                                                              "quantity": {"toolbox.q": 5}}))])
    assert (result.inserted, result.errors) == (1, 0)
    struct = warehouse.con.sql(f"SELECT metrics FROM {DATASET}.baseline_v1 LIMIT 0").types[0]
    counters = [name for name, _ in dict(struct.children)["counter"].children]
    assert counters == ["toolbox_a"] + sorted(f"toolbox_c{i}" for i in range(1000))  # old first, then new
    got = warehouse.query(f"""SELECT metrics.counter.toolbox_a, metrics.counter.toolbox_c0, metrics.counter.toolbox_c999,
                              metrics.quantity.toolbox_q FROM {DATASET}.baseline_v1 ORDER BY 1 NULLS LAST""")[1]
    assert got == [(1, None, None, None), (None, 0, 999, 5)]


def test_a_ping_time_past_year_9999_in_utc_loads_with_a_null_parsed_time(store, warehouse):
    """Its start_time string is kept; the parsed one is NULL. Before, the OverflowError was taken for
    a passing failure: the whole batch was retried for ever and nothing behind it loaded."""
    ping = make_ping(CLIENT_A)
    ping["ping_info"]["start_time"] = "9999-12-31T23:59-12:00"
    keys = [put_ping(store, ping), put_ping(store, make_ping(CLIENT_B))]
    result = Loader(store, warehouse).load_keys(keys)
    assert (result.inserted, result.errors) == (2, 0)
    assert warehouse.query(f"""SELECT ping_info.start_time, ping_info.parsed_start_time FROM {DATASET}.baseline_v1
                              WHERE client_info.client_id = ?""", [CLIENT_A])[1] == [("9999-12-31T23:59-12:00", None)]


def test_unknown_fields_are_kept_in_additional_properties(store, warehouse):
    ping = make_ping(CLIENT_A, metrics={"timing_distribution": {"toolbox.t": {
        "sum": 3, "values": {"1": 3}, "bucket_count": 100, "histogram_type": "exponential"}}})
    ping["client_info"]["brand_new_field"] = "v"
    ping["ping_info"]["server_knobs_config"] = {"metrics_enabled": {"toolbox.t": True}}
    Loader(store, warehouse).load_keys([put_ping(store, ping)])
    [(extra, dist)] = warehouse.query(
        f"SELECT additional_properties, metrics.timing_distribution.toolbox_t FROM {DATASET}.baseline_v1")[1]
    assert json.loads(extra) == {
        "client_info": {"brand_new_field": "v"},
        "ping_info": {"server_knobs_config": {"metrics_enabled": {"toolbox.t": True}}},
        "metrics": {"timing_distribution": {"toolbox.t": {"bucket_count": 100, "histogram_type": "exponential"}}},
    }
    assert dist == {"sum": 3, "values": [{"key": 1, "value": 3}]}


def test_event_timestamp_is_exact_to_the_ms_and_null_for_a_glean_timestamp_that_is_not_digits(store, warehouse):
    """Found by fuzzing (fuzz29). events_stream.event_timestamp came from int(glean_timestamp) / 1000 as a
    float: Python's int() took "1_763_814_865_443" and other scripts' digits (which BigQuery's SAFE_CAST
    to INT64 makes NULL, as Mozilla's events_stream does), and the float was off by microseconds in far
    years (a client clock in year 9999: .998993 for .999). Also NULL: whitespace other than ASCII's, and
    digits past Python's int() limit (4,300), which must not make the whole ping a load error; a JSON
    number (not what the schema asks for, but a stored ping may have it) is read, a boolean is not."""
    stamps = ["1763814865443", " 1763814865443 ", "1_763_814_865_443", "\u0661\u0667\u0666\u0663", "253402300799999",
              "253402300800000", "-1", "1e3", "", "\u00a01763814865443", "1" * 5000, 1763814865443, True]
    events = [{"category": "toolbox", "name": f"e{i}", "timestamp": i, "extra": {"glean_timestamp": s}}
              for i, s in enumerate(stamps)]
    Loader(store, warehouse).load_keys([put_ping(store, make_ping(CLIENT_A, events=events))])
    got = warehouse.query(f"SELECT strftime(event_timestamp AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S.%f') "
                          f"FROM {DATASET}.events_stream ORDER BY event_index")[1]
    assert [g for (g,) in got] == ["2025-11-22 12:34:25.443000", "2025-11-22 12:34:25.443000", None, None,
                                  "9999-12-31 23:59:59.999000", None, "1969-12-31 23:59:59.999000", None, None,
                                  None, None, "2025-11-22 12:34:25.443000", None]


def test_an_integer_past_64_bits_in_an_object_metric_or_an_unknown_field_is_stored_as_sent(store, warehouse):
    """Found by fuzzing (fuzz29). orjson reads an integer outside -2**63..2**64-1 as the nearest float:
    the edge took such a ping (the schema asks for any integer, or any JSON in an object metric) and
    the row held another number, without an error: 100000000000000000000000000001 in an object metric
    read back as 1e+29, a distribution's legacy ``count`` of 2**64 in additional_properties as
    1.8446744073709552e+19. The transform now reads such a ping with its integers as sent (only a
    payload with a run of 19 digits or more is read again): JSON values keep their digits, and a BIGINT
    field names the integer it cannot hold, where it named a rounded float."""
    big = 10**29 + 1
    ping = make_ping(CLIENT_A, metrics={
        "object": {"toolbox.obj": {"n": big, "neg": -2**63 - 1, "u64": 2**64 - 1, "list": [big, 1.5, "x"]}},
        "custom_distribution": {"toolbox.d": {"sum": 3, "values": {"1": 3}, "count": 2**64}}})
    ping["ping_info"]["server_knobs_config"] = {"n": -(10**25)}
    kept = put_ping(store, ping)
    refused = put_ping(store, make_ping(CLIENT_B, metrics={"counter": {"toolbox.c": -2**63 - 1}}))
    result = Loader(store, warehouse).load_keys([kept, refused])
    assert (result.inserted, result.errors) == (1, 1)
    [(obj, extra)] = warehouse.query(
        f"SELECT metrics.object.toolbox_obj::VARCHAR, additional_properties FROM {DATASET}.baseline_v1")[1]
    assert json.loads(obj) == {"n": big, "neg": -2**63 - 1, "u64": 2**64 - 1, "list": [big, 1.5, "x"]}
    assert '"n":100000000000000000000000000001' in obj
    assert json.loads(extra) == {"ping_info": {"server_knobs_config": {"n": -(10**25)}},
                                 "metrics": {"custom_distribution": {"toolbox.d": {"count": 2**64}}}}
    assert warehouse.query("SELECT object_key, error_type, error_message FROM _gleanpipe.errors")[1] == [
        (refused, "transform", "metrics.counter.toolbox.c: -9223372036854775809 is outside the 64-bit integer "
                               "range (-9223372036854775808 to 9223372036854775807)")]


def test_an_event_extra_past_64_bits_is_kept_as_its_digits_in_the_row_and_in_events_stream(store, warehouse):
    """The schema asks for a string in an event's extra, but a ping stored some other way may hold a
    number there: an integer past 64 bits is its digits in the row's events and in events_stream (both
    written by the transform's _dumps). Written with orjson's own dumps, events_stream's rows failed
    the whole ping ("Integer exceeds 64-bit range"); a mutant that did so survived (review30)."""
    big = 10**29 + 1
    events = [{"category": "toolbox", "name": "e", "timestamp": 1, "extra": {"n": big, "neg": -big}}]
    result = Loader(store, warehouse).load_keys([put_ping(store, make_ping(CLIENT_A, events=events))])
    assert (result.inserted, result.errors) == (1, 0)
    want = [{"key": "n", "value": str(big)}, {"key": "neg", "value": str(-big)}]
    assert warehouse.query(f"SELECT events[1].extra FROM {DATASET}.baseline_v1")[1] == [(want,)]
    assert warehouse.query(f"SELECT extra FROM {DATASET}.events_stream")[1] == [(want,)]


def test_fields_inside_known_structs_without_a_column_are_kept_too(store, warehouse):
    """Extra fields inside attribution, distribution, an experiment, a timespan, a rate, and a
    distribution bucket key that is not in canonical form: all passed the schema and were dropped."""
    ping = make_ping(CLIENT_A, metrics={
        "timespan": {"toolbox.t": {"time_unit": "millisecond", "value": 5, "note": "x"}},
        "custom_distribution": {"toolbox.d": {"sum": 3, "values": {"1": 1, "01": 2}}},
        "labeled_counter": {"toolbox.l": {"a": 1}}})
    ping["client_info"]["attribution"] = {"source": "web", "ext": {"campaign_id": "c1"}}
    ping["client_info"]["distribution"] = {"name": "store", "ext": {"partner": "p"}}
    ping["ping_info"]["experiments"] = {"exp-1": {"branch": "control", "extra": {"type": "nimbus",
                                                                              "enrollment_id": "e1", "x": "1"}}}
    from gleanpipe.validation import validate_ping

    assert validate_ping(ping) == []  # as submit takes it
    Loader(store, warehouse).load_keys([put_ping(store, ping)])
    [(extra, attribution, distribution, experiments, timespan, dist)] = warehouse.query(
        f"""SELECT additional_properties, client_info.attribution, client_info.distribution, ping_info.experiments,
                   metrics.timespan.toolbox_t, metrics.custom_distribution.toolbox_d FROM {DATASET}.baseline_v1""")[1]
    assert json.loads(extra) == {
        "client_info": {"attribution": {"ext": {"campaign_id": "c1"}}, "distribution": {"ext": {"partner": "p"}}},
        "ping_info": {"experiments": {"exp-1": {"extra": {"x": "1"}}}},
        "metrics": {"timespan": {"toolbox.t": {"note": "x"}}, "custom_distribution": {"toolbox.d": {"values": {"01": 2}}}},
    }
    assert attribution == {"campaign": None, "content": None, "medium": None, "source": "web", "term": None}
    assert distribution == {"name": "store"}
    assert experiments == [{"key": "exp-1", "value": {"branch": "control",
                                                      "extra": {"type": "nimbus", "enrollment_id": "e1"}}}]
    assert timespan == {"time_unit": "millisecond", "value": 5}
    assert dist == {"sum": 3, "values": [{"key": 1, "value": 1}]}


def test_deletion_request_deletes_the_clients_rows_everywhere(store, warehouse):
    loader = Loader(store, warehouse)
    keys = [put_ping(store, make_ping(CLIENT_A, events=EVENTS)),
            put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.a": 1}}), doc_type="metrics"),
            put_ping(store, make_ping(CLIENT_B, events=EVENTS))]
    loader.load_keys(keys)
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    result = loader.load_keys([deletion])
    assert result.deletions == 1
    q = warehouse.query
    assert q(f"SELECT client_info.client_id FROM {DATASET}.baseline_v1")[1] == [(CLIENT_B,)]
    assert q(f"SELECT count(*) FROM {DATASET}.metrics_v1")[1] == [(0,)]
    assert q(f"SELECT DISTINCT client_id FROM {DATASET}.events_stream")[1] == [(CLIENT_B,)]
    assert q(f"SELECT client_info.client_id FROM {DATASET}.deletion_request_v1")[1] == [(CLIENT_A,)]
    [(dataset, client, doc, rows_deleted)] = q(
        "SELECT dataset, client_id, document_id, rows_deleted FROM _gleanpipe.deletions")[1]
    assert (dataset, client, doc, rows_deleted) == (DATASET, CLIENT_A, deletion.rsplit("/", 1)[1][:-5], 4)
    # a late ping of the deleted client (a retry, a replay in another order) is not loaded again
    late = loader.load_keys([put_ping(store, make_ping(CLIENT_A, seq=7))])
    assert late.skipped_deleted == 1 and late.inserted == 0
    assert q(f"SELECT count(*) FROM {DATASET}.baseline_v1 WHERE client_info.client_id = ?", [CLIENT_A])[1] == [(0,)]
    # the same deletion request loaded again (a replay, twice): still one record of it
    for _ in range(2):
        again = loader.load_keys([deletion])
        assert (again.deletions, again.duplicates) == (0, 1)
    assert q("SELECT document_id, rows_deleted FROM _gleanpipe.deletions")[1] == [(doc, 4)]
    assert warehouse.status()["deletions"] == 1


def test_replay_into_fresh_warehouse_applies_deletions_in_any_order(config, store, tmp_path):
    deletion = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    ping = put_ping(store, make_ping(CLIENT_A))
    wh = DuckDBWarehouse(str(tmp_path / "fresh.duckdb"))
    try:
        Loader(store, wh).load_keys([deletion, ping])
        assert wh.query(f"SELECT count(*) FROM {DATASET}.baseline_v1")[1] == [(0,)]
    finally:
        wh.close()


def test_locked_warehouse_is_transient(tmp_path):
    from conftest import duckdb_held_elsewhere

    path = tmp_path / "locked.duckdb"
    with duckdb_held_elsewhere(path), pytest.raises(WarehouseUnavailable):
        DuckDBWarehouse(str(path))


def test_load_function_answers_503_with_one_log_line_when_it_cannot_run(load_client, fn_store, fn_env,
                                                                        monkeypatch, caplog):
    """A bad setting, then the DuckDB file held by another process (a real lock). Before: the
    framework's 500 page and a traceback in the log on every delivery; the trigger retries either
    way, so the answer is 503 and the log says what is wrong in one line."""
    from conftest import duckdb_held_elsewhere

    key = put_ping(fn_store, make_ping(CLIENT_A))
    headers, body = storage_event(key)
    monkeypatch.setenv("GLEANPIPE_WAREHOUSE_URL", "bigquery://my-project")
    with caplog.at_level("WARNING", logger="gleanpipe.functions"):
        resp = load_client.post("/", headers=headers, data=body)
    assert resp.status_code == 503 and b"load cannot run now (see its log)" in resp.data
    [record] = [r for r in caplog.records if r.name == "gleanpipe.functions"]
    assert record.getMessage().startswith("load cannot run until this is fixed (the trigger retries): ")
    assert "bigquery://PROJECT/LOCATION" in record.getMessage() and record.exc_info is None

    monkeypatch.setenv("GLEANPIPE_WAREHOUSE_URL", f"duckdb://{fn_env / 'held.duckdb'}")
    with duckdb_held_elsewhere(fn_env / "held.duckdb"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="gleanpipe.functions"):
            resp = load_client.post("/", headers=headers, data=body)
        assert resp.status_code == 503
        assert [r.exc_info for r in caplog.records if r.name == "gleanpipe.functions"] == [None]
    assert load_client.post("/", headers=headers, data=body).status_code == 200  # the lock is gone: it loads
    assert rows(None, f"SELECT client_info.client_id FROM {DATASET}.baseline_v1") == [(CLIENT_A,)]


def test_bad_row_in_a_batch_does_not_block_the_others(store, warehouse):
    """Two ids that map to one column with different types: the second row cannot load."""
    good = put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.a": 1}}))
    Loader(store, warehouse).load_keys([good])
    # force a type clash the transform does not catch: an existing BIGINT column fed a string
    huge = put_ping(store, make_ping(CLIENT_B, metrics={"counter": {"toolbox.a": "huge"}}))
    fine = put_ping(store, make_ping(CLIENT_B, metrics={"counter": {"toolbox.a": 5}}))
    result = Loader(store, warehouse).load_keys([huge, fine])
    assert result.inserted == 1 and result.errors == 1
    assert warehouse.query(f"SELECT metrics.counter.toolbox_a FROM {DATASET}.baseline_v1 ORDER BY 1")[1] == [
        (1,), (5,)]
    [(key, etype)] = warehouse.query("SELECT object_key, error_type FROM _gleanpipe.errors")[1]
    assert key == huge and etype == "warehouse"


def test_an_app_whose_dataset_duckdb_reserves_is_a_load_error_and_the_rest_loads(tmp_path):
    """App ids `temp`, `system`, `information-schema` and `warehouse` (the name DuckDB gives
    warehouse.duckdb) give datasets DuckDB cannot hold. Before: their Binder error was retried as
    transient, with every pending ping of every app in the same batch: nothing loaded again, for
    good, and `status` showed no load error (found with the real Glean SDK)."""
    from gleanpipe.warehouse import open_warehouse

    store = LocalStore(tmp_path / "store")
    wh = open_warehouse(f"duckdb://{tmp_path / 'warehouse.duckdb'}")
    try:
        keys = {}
        for app in ("temp", "system", "information-schema", "warehouse", "org.example.toolbox"):
            path = DocumentPath(app, "baseline", "1", str(uuid.uuid4()))
            meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "headers": {}, "app_id": app,
                    "doc_type": "baseline", "version": "1", "document_id": path.document_id, "key": path.key}
            store.put_new(path.key, rawobject.encode(meta, json.dumps(make_ping(CLIENT_A)).encode()))
            keys[app] = path.key
        result = Loader(store, wh).load_keys(list(keys.values()))
        assert (result.inserted, result.errors) == (1, 4)
        assert wh.query("SELECT client_info.client_id FROM org_example_toolbox.baseline")[1] == [(CLIENT_A,)]
        errors = dict(wh.query("SELECT app_id, error_message FROM _gleanpipe.errors")[1])
        assert errors["temp"] == ("the app's dataset name temp is a name DuckDB keeps for itself (a built-in catalog "
                                  "or schema), so DuckDB cannot hold its tables; the ping stays in the raw store")
        assert errors["information-schema"].startswith("the app's dataset name information_schema is a name DuckDB keeps")
        assert errors["warehouse"] == (
            "the app's dataset name warehouse is also the name DuckDB gives this warehouse file (warehouse.duckdb), so "
            "it cannot hold its tables; the ping stays in the raw store (a warehouse file with another name can: "
            "GLEANPIPE_WAREHOUSE_URL)")
        assert sorted(errors) == ["information-schema", "system", "temp", "warehouse"]
        assert wh.status()["load_errors"] == {"warehouse": 4}
    finally:
        wh.close()


@pytest.mark.parametrize("hostile", ["seq", "depth"])
def test_a_deletion_request_whose_row_cannot_be_stored_still_deletes(tmp_path, hostile):
    """Before: a deletion request with a value its row cannot hold (ping_info.seq = "many": a
    warehouse error; an object metric 300 levels deep: a transform error) was a load error like
    any other, and the client's rows stayed, for good. The SDK never sends these: a hostile or
    broken client does. The deletion needs the client id only."""
    from gleanpipe.warehouse import open_warehouse

    store = LocalStore(tmp_path / "store")
    wh = open_warehouse(f"duckdb://{tmp_path / 'wh.duckdb'}")
    try:
        loader = Loader(store, wh)
        assert loader.load_keys([put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_B))]).inserted == 2
        ping = make_ping(CLIENT_A)
        if hostile == "seq":
            ping["ping_info"]["seq"] = "many"
        else:
            deep: dict = {}
            for _ in range(300):  # the transform's JSON encoder stops at 255 levels
                deep = {"a": deep}
            ping["metrics"] = {"object": {"toolbox.deep": deep}}
        key = put_ping(store, ping, doc_type="deletion-request")
        result = loader.load_keys([key])
        assert (result.deletions, result.errors) == (1, 1)
        assert wh.query(f"SELECT client_info.client_id FROM {DATASET}.baseline")[1] == [(CLIENT_B,)]
        assert wh.query("SELECT client_id, rows_deleted FROM _gleanpipe.deletions")[1] == [(CLIENT_A, 1)]
        [(error_type, message)] = wh.query("SELECT error_type, error_message FROM _gleanpipe.errors")[1]
        assert error_type == ("warehouse" if hostile == "seq" else "transform")
        assert message.endswith("(the deletion was carried out all the same, from the client id alone)")
        late = loader.load_keys([put_ping(store, make_ping(CLIENT_A, seq=9))])
        assert (late.skipped_deleted, late.inserted) == (1, 0)
    finally:
        wh.close()


def test_a_deletion_request_whose_metadata_time_is_unreadable_still_deletes(tmp_path):
    """A submission_timestamp the warehouse cannot read (an object not written by the edge). Before:
    it was in the deletion's fallback row too, which DuckDB refused as well, so nothing was deleted.
    The deletion needs the client id only: its fallback row takes the time of the load."""
    from gleanpipe.warehouse import open_warehouse

    store = LocalStore(tmp_path / "store")
    wh = open_warehouse(f"duckdb://{tmp_path / 'wh.duckdb'}")
    try:
        loader = Loader(store, wh)
        assert loader.load_keys([put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_B))]).inserted == 2
        key = put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request", ts="not a time")
        before = datetime.now(timezone.utc)
        result = loader.load_keys([key])
        assert (result.deletions, result.inserted, result.errors) == (1, 1, 1)
        assert wh.query(f"SELECT client_info.client_id FROM {DATASET}.baseline")[1] == [(CLIENT_B,)]
        [(client, rows_deleted, requested)] = wh.query(
            "SELECT client_id, rows_deleted, requested_at FROM _gleanpipe.deletions")[1]
        assert (client, rows_deleted) == (CLIENT_A, 1) and before <= requested <= datetime.now(timezone.utc)
        [(object_key, error_type, message)] = wh.query(
            "SELECT object_key, error_type, error_message FROM _gleanpipe.errors")[1]
        assert (object_key, error_type, message) == (
            key, "raw_object", "the metadata's submission_timestamp is not a timestamp with a UTC offset: "
            '"not a time" (the deletion was carried out all the same, from the client id alone)')
    finally:
        wh.close()


def test_the_warehouse_files_catalog_name_is_matched_in_any_case(tmp_path):
    """DuckDB matches catalog names in any case: with the file Warehouse.duckdb, the app
    `warehouse` clashed all the same, and the clash stopped every app's loading again."""
    from gleanpipe.warehouse import open_warehouse

    store = LocalStore(tmp_path / "store")
    wh = open_warehouse(f"duckdb://{tmp_path / 'Warehouse.duckdb'}")
    try:
        keys = []
        for app in ("warehouse", "org.example.toolbox"):
            path = DocumentPath(app, "baseline", "1", str(uuid.uuid4()))
            meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "headers": {}, "app_id": app,
                    "doc_type": "baseline", "version": "1", "document_id": path.document_id, "key": path.key}
            store.put_new(path.key, rawobject.encode(meta, json.dumps(make_ping(CLIENT_A)).encode()))
            keys.append(path.key)
        assert (lambda r: (r.inserted, r.errors))(Loader(store, wh).load_keys(keys)) == (1, 1)
    finally:
        wh.close()


@pytest.mark.parametrize("deletion_first", [True, False])
def test_a_deletion_requests_load_error_stays_when_its_batch_is_loaded_one_by_one(tmp_path, deletion_first):
    """Another row of the batch failing makes the loader load it again by halves, down to single
    rows. Before: the stripped deletion row, loaded then, deleted its own object's load error.
    With the deletion second, its stripped row is written in a later write than its error (the
    first half's): only ``stripped`` keeps that error (warehouse.base.loaded_keys)."""
    from gleanpipe.warehouse import open_warehouse

    store = LocalStore(tmp_path / "store")
    wh = open_warehouse(f"duckdb://{tmp_path / 'wh.duckdb'}")
    try:
        loader = Loader(store, wh)
        assert loader.load_keys([put_ping(store, make_ping(CLIENT_A))]).inserted == 1
        bad_deletion, bad_ping = make_ping(CLIENT_A), make_ping(CLIENT_B)
        deep: dict = {}
        for _ in range(300):  # a transform error: the deletion's stripped row joins the batch
            deep = {"a": deep}
        bad_deletion["metrics"] = {"object": {"toolbox.deep": deep}}
        bad_ping["ping_info"]["seq"] = "many"  # a warehouse error: the batch is loaded again by halves
        keys = [put_ping(store, bad_deletion, doc_type="deletion-request"), put_ping(store, bad_ping)]
        result = loader.load_keys(keys if deletion_first else keys[::-1])
        assert (result.deletions, result.errors) == (1, 2)
        assert sorted(wh.query("SELECT object_key FROM _gleanpipe.errors")[1]) == sorted((k,) for k in keys)
        assert wh.query(f"SELECT count(*) FROM {DATASET}.baseline")[1] == [(0,)]
    finally:
        wh.close()


# --- pinned by the mutation audit (/work/notes/audit-mut.md) ----------------------------------


def test_an_upper_case_client_id_is_stored_lower_case_and_deleted_in_either_case(store, warehouse):
    """client_info.client_id is stored lower-cased (table and events_stream), and a deletion
    request deletes the client's rows whether it sends the id in upper or in lower case."""
    loader = Loader(store, warehouse)
    loader.load_keys([put_ping(store, make_ping(CLIENT_A.upper(), events=EVENTS)),
                      put_ping(store, make_ping(CLIENT_B, events=EVENTS))])
    q = warehouse.query
    assert sorted(q(f"SELECT client_info.client_id, sample_id FROM {DATASET}.baseline_v1")[1]) == sorted([
        (CLIENT_A, sample_id(CLIENT_A)), (CLIENT_B, sample_id(CLIENT_B))])
    assert q(f"SELECT DISTINCT client_id FROM {DATASET}.events_stream ORDER BY 1")[1] == sorted(
        [(CLIENT_A,), (CLIENT_B,)])
    assert loader.load_keys([put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")]).deletions == 1
    assert q(f"SELECT client_info.client_id FROM {DATASET}.baseline_v1")[1] == [(CLIENT_B,)]
    assert loader.load_keys([put_ping(store, make_ping(CLIENT_B.upper()), doc_type="deletion-request")]).deletions == 1
    assert q(f"SELECT count(*) FROM {DATASET}.baseline_v1")[1] == [(0,)]
    assert q(f"SELECT count(*) FROM {DATASET}.events_stream")[1] == [(0,)]
    assert sorted(q("SELECT client_id, rows_deleted FROM _gleanpipe.deletions")[1]) == sorted([
        (CLIENT_A, 3), (CLIENT_B, 3)])


def test_an_unknown_top_level_field_is_kept_in_additional_properties(store, warehouse):
    """README: additional_properties holds every field the table has no column for, top-level ones
    too (the schema refuses them at submit today, but a raw object from a looser schema loads)."""
    ping = make_ping(CLIENT_A, future_section={"a": [1, 2]}, note="x")
    Loader(store, warehouse).load_keys([put_ping(store, ping)])
    [(extra,)] = warehouse.query(f"SELECT additional_properties FROM {DATASET}.baseline_v1")[1]
    assert json.loads(extra) == {"future_section": {"a": [1, 2]}, "note": "x"}


def test_clean_labeled_rates_and_distributions_leave_additional_properties_null(store, warehouse):
    """A labeled metric with nothing left over adds nothing (before the any(...) test: {} per label)."""
    metrics = {name: FULL_METRICS[name] for name in FULL_METRICS if name.startswith("labeled_")}
    Loader(store, warehouse).load_keys([put_ping(store, make_ping(CLIENT_A, metrics=metrics))])
    [(extra, rate, timing)] = warehouse.query(
        f"SELECT additional_properties, metrics.labeled_rate.toolbox_hits, "
        f"metrics.labeled_timing_distribution.toolbox_load_time_by_tool FROM {DATASET}.baseline_v1")[1]
    assert extra is None
    assert rate == [{"key": "l1", "value": {"numerator": 1, "denominator": 2}}]
    assert timing == [{"key": "hammer", "value": {"sum": 10, "values": [{"key": 8, "value": 1}]}}]


def test_labeled_leftovers_name_only_the_labels_that_have_some(store, warehouse):
    """Once one label had leftover fields, every other label got an empty {} beside it."""
    metrics = {"labeled_custom_distribution": {"toolbox.cd": {
        "a": {"sum": 1, "values": {"1": 1}}, "b": {"sum": 2, "values": {"01": 2}, "count": 2}}},
        "labeled_rate": {"toolbox.r": {"x": {"numerator": 1, "denominator": 2, "note": "n"},
                                       "y": {"numerator": 3, "denominator": 4}}}}
    Loader(store, warehouse).load_keys([put_ping(store, make_ping(CLIENT_A, metrics=metrics))])
    [(extra,)] = warehouse.query(f"SELECT additional_properties FROM {DATASET}.baseline_v1")[1]
    assert json.loads(extra) == {"metrics": {"labeled_custom_distribution": {"toolbox.cd": {
        "b": {"values": {"01": 2}, "count": 2}}}, "labeled_rate": {"toolbox.r": {"x": {"note": "n"}}}}}


def test_a_distributions_zero_bucket_is_a_bucket_not_a_leftover(store, warehouse):
    """Glean sends a bucket "0" in most distributions (a zero-byte allocation, a custom
    distribution's first linear bucket). It is the canonical form of zero and must land in the
    values column as key 0, beside the other buckets; only a key written with extra zeros
    ("00", "007") is kept aside in additional_properties."""
    metrics = {"custom_distribution": {"toolbox.cd": {"sum": 14, "values": {"0": 3, "7": 2, "00": 1, "007": 4}}},
               "labeled_memory_distribution": {"toolbox.mem": {"a": {"sum": 0, "values": {"0": 5}}}}}
    Loader(store, warehouse).load_keys([put_ping(store, make_ping(CLIENT_A, metrics=metrics))])
    [(extra, cd, mem)] = warehouse.query(
        f"SELECT additional_properties, metrics.custom_distribution.toolbox_cd, "
        f"metrics.labeled_memory_distribution.toolbox_mem FROM {DATASET}.baseline_v1")[1]
    assert cd == {"sum": 14, "values": [{"key": 0, "value": 3}, {"key": 7, "value": 2}]}
    assert mem == [{"key": "a", "value": {"sum": 0, "values": [{"key": 0, "value": 5}]}}]
    assert json.loads(extra) == {"metrics": {"custom_distribution": {"toolbox.cd": {"values": {"00": 1, "007": 4}}}}}


def test_metric_ids_that_differ_by_dot_and_underscore_keep_the_first_in_the_column(store, warehouse):
    """`toolbox.a_b` and `toolbox.a.b` share the column toolbox_a_b: the first in the ping fills it,
    the second is kept in additional_properties."""
    ping = make_ping(CLIENT_A, metrics={"counter": {"toolbox.a_b": 1, "toolbox.a.b": 2}})
    Loader(store, warehouse).load_keys([put_ping(store, ping)])
    [(column, extra)] = warehouse.query(
        f"SELECT metrics.counter.toolbox_a_b, additional_properties FROM {DATASET}.baseline_v1")[1]
    assert column == 1
    assert json.loads(extra) == {"metrics": {"counter": {"toolbox.a.b": 2}}}


def test_the_content_length_header_is_stored(store, warehouse):
    """metadata.header.content_length is the kept Content-Length, not another header's value."""
    headers = {"date": "Mon, 23 Nov 2026 08:00:00 GMT", "user_agent": "curl/8", "content_length": "321",
               "x_telemetry_agent": "Glean/71.0.0"}
    Loader(store, warehouse).load_keys([put_ping(store, make_ping(CLIENT_A), headers=headers)])
    assert warehouse.query(f"SELECT metadata.header.content_length, metadata.header.user_agent "
                           f"FROM {DATASET}.baseline_v1")[1] == [("321", "curl/8")]


@pytest.mark.parametrize("head", [{"app_id": APP}, {"format": "gleanpipe-raw/2", "app_id": APP}])
def test_an_object_of_another_format_is_a_raw_object_load_error(store, warehouse, head):
    """A first line without "format": "gleanpipe-raw/1" is not a raw object, however well the rest reads."""
    path = DocumentPath(APP, "baseline", "1", str(uuid.uuid4()))
    meta = {**head, "submission_timestamp": "2026-11-23T08:00:00.000000Z", "headers": {}, "doc_type": "baseline",
            "version": "1", "document_id": path.document_id, "key": path.key}
    store.put_new(path.key, json.dumps(meta).encode() + b"\n" + json.dumps(make_ping(CLIENT_A)).encode())
    result = Loader(store, warehouse).load_keys([path.key])
    assert (result.inserted, result.errors) == (0, 1)
    assert warehouse.query("SELECT object_key, error_type, error_message FROM _gleanpipe.errors")[1] == [
        (path.key, "raw_object", f"unknown raw object format {head.get('format')!r}")]


README_PING = b"""{"client_info": {"app_build": "1", "app_channel": "release", "app_display_version": "0.1.0",
  "architecture": "x86_64", "client_id": "2c3b0f6e-9a4d-4d6b-8f0e-1a2b3c4d5e6f",
  "first_run_date": "2026-11-22+00:00", "os": "Linux", "os_version": "6.1",
  "telemetry_sdk_build": "71.0.0"},
 "ping_info": {"seq": 0, "start_time": "2026-11-23T09:00+00:00", "end_time": "2026-11-23T09:05+00:00"},
 "metrics": {"counter": {"toolbox.launch_count": 1},
             "labeled_counter": {"toolbox.tool_used": {"hammer": 2, "pliers": 1}}}}
"""


def test_a_pretty_printed_ping_round_trips_through_submit_and_load(load_client, fn_store):
    """The README's curl example: a payload with newlines in it is stored as sent and loads with its values."""
    import gzip

    from conftest import SDK_HEADERS

    submit = create_app(target="submit", source=str(ROOT / "functions" / "main.py")).test_client()
    doc_id = str(uuid.uuid4())
    resp = submit.post(f"/submit/{APP}/metrics/1/{doc_id}", data=gzip.compress(README_PING), headers=SDK_HEADERS)
    assert resp.status_code == 200
    key = f"raw/{APP}/metrics/1/{doc_id}.json"
    assert rawobject.decode(fn_store.get(key))[1] == README_PING
    headers, body = storage_event(key)
    assert load_client.post("/", headers=headers, data=body).status_code == 200
    assert rows(None, f"""SELECT document_id, client_info.client_id, client_info.os_version, ping_info.seq,
                                 metrics.counter.toolbox_launch_count, metrics.labeled_counter.toolbox_tool_used
                          FROM {DATASET}.metrics_v1""") == [
        (doc_id, "2c3b0f6e-9a4d-4d6b-8f0e-1a2b3c4d5e6f", "6.1", 0, 1,
         [{"key": "hammer", "value": 2}, {"key": "pliers", "value": 1}])]
    assert rows(None, "SELECT count(*) FROM _gleanpipe.errors") == [(0,)]


def test_client_info_integer_fields_are_integer_columns(store, warehouse):
    """client_info.windows_build_number and session_count are integers in the Glean schema (the
    edge refuses "22631" as a string): their columns are BIGINT, so they sort and sum as numbers."""
    ping = make_ping(CLIENT_A)
    ping["client_info"].update({"windows_build_number": 22631, "session_count": 7, "session_id": "s-1",
                                "android_sdk_version": "34"})
    Loader(store, warehouse).load_keys([put_ping(store, ping)])
    [(build, sessions, sdk, kinds)] = warehouse.query(
        f"SELECT client_info.windows_build_number, client_info.session_count, client_info.android_sdk_version, "
        f"[typeof(client_info.windows_build_number), typeof(client_info.session_count)] FROM {DATASET}.baseline_v1")[1]
    assert (build, sessions, sdk) == (22631, 7, "34")
    assert kinds == ["BIGINT", "BIGINT"]


def test_a_rows_file_that_cannot_be_written_is_the_warehouse_out_of_reach_not_a_bare_os_error(store, warehouse):
    """The DuckDB warehouse writes a batch's rows to a file in its temp folder and reads it in. When
    that file cannot be made (a real fault here: a folder in its place), the load raises
    WarehouseUnavailable naming the file, which serve's admin API answers with 503 and the
    triggers retry. The clean-up after it failed too, and its IsADirectoryError replaced that
    error (a 400 through the admin API, the request's fault)."""
    import os

    key = put_ping(store, make_ping())
    rows = os.path.join(warehouse._tmp, "rows.ndjson")
    os.mkdir(rows)
    with pytest.raises(WarehouseUnavailable) as exc:
        Loader(store, warehouse).load_keys([key])
    assert str(exc.value) == f"cannot write the rows to load to {rows}: Is a directory"
    os.rmdir(rows)
    assert Loader(store, warehouse).load_keys([key]).inserted == 1


def test_a_stored_ping_nested_deeper_than_a_row_can_be_written_says_so(tmp_path):
    """A ping the edge took before it refused pings nested past nesting.MAX_JSON_DEPTH (64), or stored
    some other way, then loaded or replayed: 254 levels load; 255 cannot (orjson writes the row, and
    stops at 254), and the load error says so, and where. Before: "TypeError: Recursion limit reached"."""
    from gleanpipe.warehouse import open_warehouse

    def chain(levels: int) -> list:
        value: list = []
        for _ in range(levels - 1):
            value = [value]
        return value

    def cut(path: str) -> str:
        return path if len(path) <= 100 else path[:97] + "..."

    store = LocalStore(tmp_path / "store")
    wh = open_warehouse(f"duckdb://{tmp_path / 'wh.duckdb'}")
    try:
        # the ping, metrics and metrics.object are 3 levels: the metric's value is at level 4
        fits = put_ping(store, make_ping(CLIENT_A, metrics={"object": {"toolbox.deep": chain(251)}}))
        deep_metric = put_ping(store, make_ping(CLIENT_B, metrics={"object": {"toolbox.deep": chain(252)}}))
        deep_field = put_ping(store, {**make_ping(CLIENT_B), "x": chain(254)})  # additional_properties
        result = Loader(store, wh).load_keys([fits, deep_metric, deep_field])
        assert (result.inserted, result.errors) == (1, 2)
        [(value,)] = wh.query(f"SELECT metrics.object.toolbox_deep FROM {DATASET}.baseline")[1]
        assert json.loads(value) == chain(251)
        errors = dict(((k, (t, m)) for k, t, m in wh.query(
            "SELECT object_key, error_type, error_message FROM _gleanpipe.errors")[1]))
        tail = " (the edge now refuses pings nested deeper than 64 levels: MAX_JSON_DEPTH)"
        lead = ("the ping nests JSON deeper than 254 levels, the most its row can be written with, so it cannot load: "
                "level 255 begins at ")
        assert errors == {
            deep_metric: ("transform", lead + cut("metrics.object.toolbox.deep" + "[0]" * 251) + tail),
            deep_field: ("transform", lead + cut("x" + "[0]" * 253) + tail),
        }
    finally:
        wh.close()


def test_a_ping_too_deep_for_pythons_json_with_a_long_number_is_the_too_deep_load_error(store, warehouse):
    """A payload with a run of 19 digits is read again with Python's json (transform.exact_integers),
    whose recursion limit (about 1,000 levels) is below orjson's (1,024): that read gives up with a
    RecursionError, and the ping is what orjson read, here a load error as too deep. Without that
    fallback the RecursionError left transform and failed the whole batch, the good ping too, on
    every retry. Found by a mutation round (review30)."""
    levels = 1010
    payload = (json.dumps(make_ping(CLIENT_A))[:-1].encode() + b', "n": 123456789012345678901234, "x": '
               + b"[" * levels + b"]" * levels + b"}")
    with pytest.raises(RecursionError):  # what the test is about: Python's json cannot read it, orjson can
        json.loads(payload)
    path = DocumentPath(APP, "baseline", "1", str(uuid.uuid4()))
    meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "app_id": APP, "doc_type": "baseline",
            "version": "1", "document_id": path.document_id, "key": path.key}
    assert store.put_new(path.key, rawobject.encode(meta, payload))
    good = put_ping(store, make_ping(CLIENT_B))
    result = Loader(store, warehouse).load_keys([path.key, good])
    assert (result.inserted, result.errors) == (1, 1)
    [(error_type, message)] = warehouse.query("SELECT error_type, error_message FROM _gleanpipe.errors")[1]
    assert error_type == "transform" and message.startswith(
        "the ping nests JSON deeper than 254 levels, the most its row can be written with, so it cannot load: "
        "level 255 begins at x[0][0]"), message


def test_a_metric_id_over_128_characters_as_a_column_goes_to_additional_properties(store, warehouse):
    """README: an id that makes no column name (over 128 characters, naming.IDENT_RE) goes to
    additional_properties; one of exactly 128 is a column. The bound was not tested: ids of any
    length made columns and every test passed."""
    at = "toolbox." + "a" * 120  # column toolbox_aaa...: 128 characters
    over = "toolbox." + "b" * 121  # 129
    ping = make_ping(CLIENT_A, metrics={"counter": {at: 1, over: 2}})
    result = Loader(store, warehouse).load_keys([put_ping(store, ping)])
    assert (result.inserted, result.errors) == (1, 0)
    column = at.replace(".", "_")
    assert len(column) == 128
    [(value, extra)] = warehouse.query(
        f"SELECT metrics.counter.{column}, additional_properties FROM {DATASET}.baseline_v1")[1]
    assert value == 1
    assert json.loads(extra or "null") == {"metrics": {"counter": {over: 2}}}
    assert [c for (c,) in warehouse.query(
        f"SELECT unnest(struct_keys(metrics.counter)) FROM {DATASET}.baseline_v1 LIMIT 1")[1]] == [column]


def test_an_experiment_that_is_no_object_is_kept_in_additional_properties(store, warehouse):
    """The schema wants each ping_info.experiments value to be an object; one that is not (a raw
    object from a looser GLEANPIPE_SCHEMA_PATH, or stored before a schema change) makes no row of
    the experiments column and is kept in additional_properties, as every field without a column is."""
    ping = make_ping(CLIENT_A)
    ping["ping_info"]["experiments"] = {"exp-1": {"branch": "control"}, "exp-2": "treatment", "exp-3": None}
    result = Loader(store, warehouse).load_keys([put_ping(store, ping)])
    assert (result.inserted, result.errors) == (1, 0)
    [(experiments, extra)] = warehouse.query(
        f"SELECT ping_info.experiments, additional_properties FROM {DATASET}.baseline_v1")[1]
    assert experiments == [{"key": "exp-1", "value": {"branch": "control", "extra": None}}]
    assert json.loads(extra or "null") == {"ping_info": {"experiments": {"exp-2": "treatment", "exp-3": None}}}


def test_an_events_session_is_stored_with_its_fractional_sample_rate(store, warehouse):
    """An event's session (newer SDKs send it) lands in events[].session, its sample rate a DOUBLE:
    no test sent one, and a session_sample_rate column of BIGINT refused every such ping."""
    from gleanpipe.validation import validate_ping

    session = {"session_id": "5d6e7f80-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "session_seq": 3, "event_seq": 7,
               "session_sample_rate": 0.25, "session_start_time": "2026-11-22T12:00:00.000+00:00"}
    ping = make_ping(CLIENT_A, events=[{"category": "toolbox", "name": "tool_opened", "timestamp": 5,
                                        "session": session}])
    assert validate_ping(ping) == []  # as submit takes it
    result = Loader(store, warehouse).load_keys([put_ping(store, ping, doc_type="events")])
    assert (result.inserted, result.errors) == (1, 0)
    assert warehouse.query(f"SELECT events[1].session FROM {DATASET}.events_v1")[1] == [(session,)]


def test_deletion_requests_of_two_apps_with_one_document_id_are_each_recorded(store, tmp_path):
    """A deletion request is recorded once per (dataset, document_id): loaded again it is not
    recorded again. Another app's request with the same document id is another request, recorded
    and carried out in its own dataset, and its record still keeps that app's late pings out after
    the warehouse is opened again."""
    other, other_dataset = "org-example-other", "org_example_other"
    document_id = str(uuid.uuid4())
    path = tmp_path / "two.duckdb"
    wh = DuckDBWarehouse(str(path))
    try:
        loader = Loader(store, wh)
        loader.load_keys([put_ping(store, make_ping(CLIENT_A)), put_ping(store, make_ping(CLIENT_A), app=other)])
        for app in (APP, other):
            result = loader.load_keys([put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request",
                                                document_id=document_id, app=app)])
            assert (result.inserted, result.deletions) == (1, 1)
        assert sorted(wh.query("SELECT dataset, client_id, document_id, rows_deleted FROM _gleanpipe.deletions")[1]) == [
            (other_dataset, CLIENT_A, document_id, 1), (DATASET, CLIENT_A, document_id, 1)]
    finally:
        wh.close()
    wh = DuckDBWarehouse(str(path))
    try:
        late = Loader(store, wh).load_keys([put_ping(store, make_ping(CLIENT_A, seq=1), app=other)])
        assert (late.skipped_deleted, late.inserted) == (1, 0)
        assert wh.query(f"SELECT count(*) FROM {other_dataset}.baseline_v1")[1] == [(0,)]
    finally:
        wh.close()


def test_a_ping_tables_columns_are_the_readmes_in_its_order(store, warehouse):
    """README, "Table layout": the columns of a ping table, in Mozilla's order (``metrics`` comes
    last in DuckDB, added with the first metric). Nothing compared the two."""
    import re

    readme = (ROOT / "README.md").read_text()
    table = readme.split("The columns follow Mozilla's layout:\n", 1)[1].split("\n\n", 1)[0]
    documented = [name for line in table.splitlines()[2:] for name in re.findall(r"`([^`]+)`", line.split("|")[1])]
    assert "metrics.<type>.<category_name>" in documented
    Loader(store, warehouse).load_keys([put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.n": 1}}))])
    columns = [c for (c,) in warehouse.query(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = 'baseline_v1' "
        "ORDER BY column_index", [DATASET])[1]]
    assert columns[-1] == "metrics"
    assert columns[:-1] == [c for c in documented if c != "metrics.<type>.<category_name>"] == [
        "submission_timestamp", "document_id", "sample_id", "normalized_channel", "normalized_os",
        "normalized_os_version", "client_info", "ping_info", "metadata", "events", "additional_properties"]


class StatementLog:
    """The warehouse's real DuckDB connection, which records each statement it runs (a spy, not a
    mock: what the test checks is which statement loads a batch, a cost no result shows)."""

    def __init__(self, con):
        self._con, self.statements = con, []

    def execute(self, sql, *args):
        self.statements.append(sql)
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_a_batch_goes_in_with_a_plain_insert_of_its_new_rows(store, warehouse):
    """The rows of documents already in the table are left out before the INSERT, found by their
    ids; an INSERT ... WHERE NOT EXISTS (anti-join on document_id) cost 100 ms more per batch of 10
    than the plain INSERT on a table with 1,800 metric columns (228 against 131 ms, 2 cores)."""
    old = put_ping(store, make_ping(CLIENT_A, {"counter": {"toolbox.launch_count": 1}}))
    assert Loader(store, warehouse).load_keys([old]).inserted == 1
    warehouse.con = log = StatementLog(warehouse.con)
    new = [put_ping(store, make_ping(CLIENT_B, {"counter": {"toolbox.launch_count": n}})) for n in (2, 3)]
    result = Loader(store, warehouse).load_keys([old, *new])
    assert (result.inserted, result.duplicates) == (2, 1)
    inserts = [s for s in log.statements if s.startswith(f'INSERT INTO "{DATASET}"."baseline_v1" ')]
    assert len(inserts) == 1 and "NOT EXISTS" not in inserts[0]
    warehouse.con = log._con
    assert warehouse.query(f"SELECT client_info.client_id, metrics.counter.toolbox_launch_count FROM "
                           f"{DATASET}.baseline_v1 ORDER BY 2")[1] == [(CLIENT_A, 1), (CLIENT_B, 2), (CLIENT_B, 3)]
