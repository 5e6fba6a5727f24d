"""Derived views (views.py) on a real DuckDB file, from hand-built pings with known values."""

from __future__ import annotations

import json
import uuid

import duckdb
import pytest

from gleanpipe import rawobject
from gleanpipe.load import Loader
from gleanpipe.naming import DocumentPath
from gleanpipe.views import AGGREGATED_TYPES

from conftest import APP, DATASET, make_ping

A = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
B = "0b4c2d1e-9f8a-4b7c-8d6e-5f4a3b2c1d0e"
DAY1, DAY2 = "2026-11-21T23:59:59.000000Z", "2026-11-22T00:00:01.000000Z"


def put(store, ping: dict, doc_type: str, ts: str) -> str:
    path = DocumentPath(APP, doc_type, "1", str(uuid.uuid4()))
    meta = {"submission_timestamp": ts, "uri": f"/submit/{APP}/{doc_type}/1/{path.document_id}", "headers": {},
            "app_id": APP, "doc_type": doc_type, "version": "1", "document_id": path.document_id, "key": path.key}
    assert store.put_new(path.key, rawobject.encode(meta, json.dumps(ping).encode()))
    return path.key


def dist(values: dict, total: int) -> dict:
    return {"sum": total, "values": {str(k): v for k, v in values.items()}}


# The aggregated types not named in the pings of `loaded` (added to them; also used by test_warehouses'
# test_derived_views_give_the_same_rows_on_both): clients A and B, day 1, metrics_v1.
MORE_A = {
    "timespan": {"toolbox.startup_duration": {"time_unit": "millisecond", "value": 1234}},
    "labeled_quantity": {"toolbox.sizes": {"s": 3, "m": 5}},
    "labeled_boolean": {"toolbox.feature_on": {"a": True, "b": False}},
    "labeled_rate": {"toolbox.hits": {"l1": {"numerator": 1, "denominator": 2}}},
    "memory_distribution": {"toolbox.heap_usage": dist({1024: 2}, 3000)},
    "custom_distribution": {"toolbox.batch_sizes": dist({1: 1, 4: 2}, 9)},
    "labeled_memory_distribution": {"toolbox.mem_by_tool": {"hammer": dist({8: 1}, 10)}},
    "labeled_custom_distribution": {"toolbox.cd_by_tool": {"hammer": dist({8: 2}, 20)}},
}
MORE_B = {
    "timespan": {"toolbox.startup_duration": {"time_unit": "millisecond", "value": 766}},
    "labeled_quantity": {"toolbox.sizes": {"s": 7}},
    "labeled_boolean": {"toolbox.feature_on": {"a": True}},
    "labeled_rate": {"toolbox.hits": {"l1": {"numerator": 1, "denominator": 4}, "l2": {"numerator": 3,
                                                                                     "denominator": 5}}},
    "memory_distribution": {"toolbox.heap_usage": dist({2048: 1}, 2048)},
}
# Their metric_daily rows: metric, label, type, pings, clients, samples, sum, avg (4 places), min, max
MORE_ROWS = [
    ("toolbox_batch_sizes", None, "custom_distribution", 1, 1, 3.0, 9.0, 3.0, None, None),
    ("toolbox_cd_by_tool", "hammer", "labeled_custom_distribution", 1, 1, 2.0, 20.0, 10.0, None, None),
    ("toolbox_feature_on", "a", "labeled_boolean", 2, 2, 2.0, 2.0, 1.0, 1.0, 1.0),
    ("toolbox_feature_on", "b", "labeled_boolean", 1, 1, 1.0, 0.0, 0.0, 0.0, 0.0),
    ("toolbox_heap_usage", None, "memory_distribution", 2, 2, 3.0, 5048.0, 1682.6667, None, None),
    ("toolbox_hits", "l1", "labeled_rate", 2, 2, 6.0, 2.0, 0.3333, None, None),
    ("toolbox_hits", "l2", "labeled_rate", 1, 1, 5.0, 3.0, 0.6, None, None),
    ("toolbox_mem_by_tool", "hammer", "labeled_memory_distribution", 1, 1, 1.0, 10.0, 10.0, None, None),
    ("toolbox_sizes", "m", "labeled_quantity", 1, 1, 1.0, 5.0, 5.0, 5.0, 5.0),
    ("toolbox_sizes", "s", "labeled_quantity", 2, 2, 2.0, 10.0, 5.0, 3.0, 7.0),
    ("toolbox_startup_duration", None, "timespan", 2, 2, 2.0, 2000.0, 1000.0, 766.0, 1234.0),
]


@pytest.fixture
def loaded(store, warehouse):
    keys = [
        # day 1: two baseline pings of A, one of B
        put(store, make_ping(A, {"counter": {"toolbox.launch_count": 2}}), "baseline", DAY1),
        put(store, make_ping(A, {"counter": {"toolbox.launch_count": 3}}), "baseline", DAY1),
        put(store, make_ping(B, {"counter": {"toolbox.launch_count": 5}}), "baseline", DAY1),
        # day 2: one baseline ping of B
        put(store, make_ping(B, {"counter": {"toolbox.launch_count": 7}}), "baseline", DAY2),
        put(store, make_ping(A, {
            "quantity": {"toolbox.open_windows": 4},
            "boolean": {"toolbox.dark_mode_enabled": True},
            "labeled_counter": {"toolbox.tool_used": {"hammer": 2, "pliers": 1}},
            "timing_distribution": {"toolbox.render_time": dist({100: 2, 200: 1}, 400)},
            "rate": {"toolbox.cache_hit_rate": {"numerator": 3, "denominator": 4}},
            "dual_labeled_counter": {"toolbox.clicks": {"button": {"left": 2, "right": 1}}},
            "string": {"toolbox.active_theme": "dark"},
            "labeled_timing_distribution": {"toolbox.load_time_by_tool": {"saw": dist({10: 3}, 33)}},
            **MORE_A,
        }), "metrics", DAY1),
        put(store, make_ping(B, {
            "quantity": {"toolbox.open_windows": 8},
            "boolean": {"toolbox.dark_mode_enabled": False},
            "labeled_counter": {"toolbox.tool_used": {"hammer": 5}},
            "timing_distribution": {"toolbox.render_time": dist({200: 1}, 250)},
            "rate": {"toolbox.cache_hit_rate": {"numerator": 1, "denominator": 4}},
            "string": {"toolbox.active_theme": "dark"},
            **MORE_B,
        }), "metrics", DAY1),
        put(store, make_ping(A, events=[
            {"category": "toolbox", "name": "tool_opened", "timestamp": 1, "extra": {"tool": "saw"}},
            {"category": "toolbox", "name": "tool_opened", "timestamp": 2, "extra": {"tool": "saw"}},
        ]), "events", DAY2),
    ]
    result = Loader(store, warehouse).load_keys(keys)
    assert result.inserted == len(keys)
    return warehouse


def rows(wh, sql):
    columns, data = wh.query(sql)
    return [dict(zip(columns, r)) for r in data]


def metric(wh, name, label=None):
    where = f"metric = '{name}'" + (f" AND label = '{label}'" if label else "")
    return rows(wh, f"SELECT CAST(day AS VARCHAR) AS day, ping_table, metric_type, label, pings, clients, samples, "
                    f"sum_value, avg_value, min_value, max_value FROM {DATASET}.metric_daily WHERE {where} "
                    "ORDER BY day, label")


def test_daily_active_clients_from_baseline(loaded):
    got = rows(loaded, f"SELECT CAST(day AS VARCHAR) AS day, clients, pings FROM {DATASET}.daily_active_clients "
                       "ORDER BY day")
    assert got == [{"day": "2026-11-21", "clients": 2, "pings": 3}, {"day": "2026-11-22", "clients": 1, "pings": 1}]


def test_events_per_day(loaded):
    got = rows(loaded, f"SELECT CAST(day AS VARCHAR) AS day, category, name, events, clients FROM {DATASET}.events_daily")
    assert got == [{"day": "2026-11-22", "category": "toolbox", "name": "tool_opened", "events": 2, "clients": 1}]


def test_counter_daily_sum(loaded):
    got = metric(loaded, "toolbox_launch_count")
    assert [(r["day"], r["ping_table"], r["sum_value"], r["pings"], r["clients"], r["max_value"]) for r in got] == [
        ("2026-11-21", "baseline_v1", 10.0, 3, 2, 5.0), ("2026-11-22", "baseline_v1", 7.0, 1, 1, 7.0)]


def test_quantity_average_and_max(loaded):
    (r,) = metric(loaded, "toolbox_open_windows")
    assert (r["avg_value"], r["max_value"], r["min_value"], r["sum_value"]) == (6.0, 8.0, 4.0, 12.0)


def test_boolean_true_count_and_share(loaded):
    (r,) = metric(loaded, "toolbox_dark_mode_enabled")
    assert (r["sum_value"], r["avg_value"], r["pings"]) == (1.0, 0.5, 2)


def test_labeled_counter_per_label(loaded):
    got = metric(loaded, "toolbox_tool_used")
    assert [(r["label"], r["sum_value"], r["pings"]) for r in got] == [("hammer", 7.0, 2), ("pliers", 1.0, 1)]


def test_distribution_samples_sum_and_mean(loaded):
    (r,) = metric(loaded, "toolbox_render_time")
    # samples: 2 + 1 + 1 = 4 bucket entries; sum of sums 400 + 250; mean sample 650 / 4
    assert (r["samples"], r["sum_value"], r["avg_value"], r["pings"]) == (4.0, 650.0, 162.5, 2)
    (r,) = metric(loaded, "toolbox_load_time_by_tool")
    assert (r["label"], r["samples"], r["sum_value"]) == ("saw", 3.0, 33.0)


def test_rate_ratio_and_dual_labels(loaded):
    (r,) = metric(loaded, "toolbox_cache_hit_rate")
    assert (r["sum_value"], r["samples"], r["avg_value"]) == (4.0, 8.0, 0.5)
    got = metric(loaded, "toolbox_clicks")
    assert [(r["label"], r["sum_value"]) for r in got] == [("button/left", 2.0), ("button/right", 1.0)]


def test_string_value_counts(loaded):
    (r,) = metric(loaded, "toolbox_active_theme")
    assert (r["label"], r["pings"], r["sum_value"]) == ("dark", 2, 2.0)


def test_every_other_type_has_its_own_rows(loaded):
    # timespan sums its value; labeled_rate sums numerators (sum_value) over denominators (samples)
    got = rows(loaded, f"SELECT metric, label, metric_type, pings, clients, samples, sum_value, "
                       f"ROUND(avg_value, 4) AS avg, min_value, max_value FROM {DATASET}.metric_daily "
                       f"WHERE metric_type IN {tuple(MORE_A)} ORDER BY metric, label")
    assert [tuple(r.values()) for r in got] == MORE_ROWS
    day1 = rows(loaded, f"SELECT DISTINCT CAST(day AS VARCHAR) AS day, ping_table FROM {DATASET}.metric_daily "
                        f"WHERE metric_type IN {tuple(MORE_A)}")
    assert day1 == [{"day": "2026-11-21", "ping_table": "metrics_v1"}]
    # with test_views' other tests, every type metric_daily aggregates
    types = {r["metric_type"] for r in rows(loaded, f"SELECT DISTINCT metric_type FROM {DATASET}.metric_daily")}
    assert types == set(AGGREGATED_TYPES)


def test_views_follow_new_columns_and_are_idempotent(loaded, store):
    # A metric never seen before widens the table; the view picks it up without any manual step.
    key = put(store, make_ping(A, {"counter": {"toolbox.brand_new": 11}}), "baseline", DAY2)
    Loader(store, loaded).load_keys([key])
    assert [(r["day"], r["sum_value"]) for r in metric(loaded, "toolbox_brand_new")] == [("2026-11-22", 11.0)]
    loaded.refresh_views()
    loaded.refresh_views()
    assert [(r["day"], r["sum_value"]) for r in metric(loaded, "toolbox_launch_count")] == [
        ("2026-11-21", 10.0), ("2026-11-22", 7.0)]
    assert rows(loaded, f"SELECT sum(clients) AS n FROM {DATASET}.daily_active_clients") == [{"n": 4}]


def test_views_exist_but_are_empty_without_their_tables(store, warehouse):
    key = put(store, make_ping(A, {"string": {"toolbox.active_theme": "x"}}), "custom", DAY1)
    Loader(store, warehouse).load_keys([key])
    assert rows(warehouse, f"SELECT count(*) AS n FROM {DATASET}.daily_active_clients") == [{"n": 0}]
    assert rows(warehouse, f"SELECT count(*) AS n FROM {DATASET}.events_daily") == [{"n": 0}]
    # the views are there (as views, not tables: status, which lists tables, does not count them)
    views = rows(warehouse, f"SELECT view_name FROM duckdb_views() WHERE schema_name = '{DATASET}'")
    assert {"metric_daily", "events_daily", "daily_active_clients"} <= {v["view_name"] for v in views}
    assert {t["table"] for t in warehouse.status()["tables"] if t["dataset"] == DATASET} == {"custom_v1"}


def test_deletion_requests_still_work_beside_the_views(loaded, store):
    key = put(store, make_ping(A), "deletion-request", DAY2)
    result = Loader(store, loaded).load_keys([key])
    assert result.deletions == 1
    got = rows(loaded, f"SELECT CAST(day AS VARCHAR) AS day, clients FROM {DATASET}.daily_active_clients ORDER BY day")
    assert got == [{"day": "2026-11-21", "clients": 1}, {"day": "2026-11-22", "clients": 1}]  # only B is left
    assert rows(loaded, f"SELECT count(*) AS n FROM {DATASET}.events_daily") == [{"n": 0}]  # A's events are gone


def test_percentile_from_buckets_and_struct_type_parsing():
    from gleanpipe.dictionary.catalog import percentile, split_struct

    buckets = [(5, 3), (1, 2), (100, 1)]  # 6 samples: 1, 1, 5, 5, 5, 100
    assert [percentile(buckets, p) for p in (10, 33, 34, 50, 83, 84, 95, 100)] == [1, 1, 5, 5, 5, 100, 100, 100]
    assert percentile([], 50) is None and percentile([(3, 0)], 50) is None
    assert split_struct('STRUCT(counter STRUCT(a_b BIGINT, "values" BIGINT), "x y" VARCHAR[])') == [
        ("counter", 'STRUCT(a_b BIGINT, "values" BIGINT)'), ("x y", "VARCHAR[]")]
    assert split_struct("BIGINT") == []



class CommitWatch:
    """The warehouse's real DuckDB connection, which after each commit runs ``watch`` (a spy, not a
    mock: DuckDB has no hook at the moment a transaction commits, and the defect was that moment)."""

    def __init__(self, con, watch):
        self._con, self._watch = con, watch

    def commit(self):
        self._con.commit()
        self._watch()

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_a_schema_is_never_seen_without_its_derived_views(store, warehouse):
    # Right after each commit, read as serve's admin API and `gleanpipe query` do (read_query, a
    # cursor of its own): the app's schema is either not there or there with all three views, and
    # they already show the rows just loaded. They were made after the commit, so a query in between
    # failed with "Table with name metric_daily does not exist!".
    seen = []

    def look():
        if not warehouse.read_query("SELECT 1 FROM duckdb_schemas() WHERE schema_name = ?", [DATASET])[1]:
            seen.append(None)
            return
        got = {}
        for name, sql in (
                ("daily_active_clients", "SELECT CAST(day AS VARCHAR), clients, pings FROM {}.daily_active_clients"),
                ("events_daily", "SELECT CAST(day AS VARCHAR), name, events, clients FROM {}.events_daily"),
                ("metric_daily", "SELECT metric, pings, sum_value FROM {}.metric_daily ORDER BY metric")):
            try:
                got[name] = warehouse.read_query(sql.format(DATASET))[1]
            except Exception as exc:  # noqa: BLE001 - the failure is what the test reports
                got[name] = str(exc).splitlines()[0]
        seen.append(got)

    warehouse.con = CommitWatch(warehouse.con, look)
    first = put(store, make_ping(A, {"counter": {"toolbox.launch_count": 2}}), "baseline", DAY1)
    assert Loader(store, warehouse).load_keys([first]).inserted == 1
    assert seen[-1] == {"daily_active_clients": [("2026-11-21", 1, 1)], "events_daily": [],
                        "metric_daily": [("toolbox_launch_count", 1, 2.0)]}
    # a new table and a new metric column (the table widened) reach the views in the same commit
    more = [put(store, make_ping(B, {"counter": {"toolbox.brand_new": 11}}), "baseline", DAY1),
            put(store, make_ping(A, events=[{"category": "toolbox", "name": "tool_opened", "timestamp": 1}]),
                "events", DAY2)]
    assert Loader(store, warehouse).load_keys(more).inserted == 2
    assert seen[-1] == {"daily_active_clients": [("2026-11-21", 2, 2)],
                        "events_daily": [("2026-11-22", "tool_opened", 1, 1)],
                        "metric_daily": [("toolbox_brand_new", 1, 11.0), ("toolbox_launch_count", 1, 2.0)]}
    assert all(s is None or all(isinstance(v, list) for v in s.values()) for s in seen), seen


def test_apps_add_makes_the_views_with_the_tables(warehouse):
    # ensure_columns (`gleanpipe apps add`) creates an app's tables before any ping: the same commit
    # brings the views, with the new column in metric_daily's (still empty) body.
    seen = []
    warehouse.con = CommitWatch(warehouse.con, lambda: seen.append(warehouse.read_query(
        "SELECT view_name FROM duckdb_views() WHERE schema_name = ? AND view_name IN "
        "('daily_active_clients', 'events_daily', 'metric_daily', 'metrics') ORDER BY 1", [DATASET])[1]))
    added = warehouse.ensure_columns({(DATASET, "metrics_v1"): {"counter": {"toolbox_launch_count"}}})
    assert added == [f"{DATASET}.metrics_v1.metrics.counter.toolbox_launch_count"]
    assert seen == [[("daily_active_clients",), ("events_daily",), ("metric_daily",), ("metrics",)]]
    sql = warehouse.read_query("SELECT sql FROM duckdb_views() WHERE schema_name = ? AND view_name = 'metric_daily'",
                               [DATASET])[1][0][0]
    assert "'toolbox_launch_count'" in sql  # the metric's name, in the list metric_daily unnests


def test_a_view_duckdb_refuses_does_not_fail_the_load(config, store, caplog):
    # A table already holds the name metric_daily in the app's schema (made by another tool), so
    # CREATE VIEW metric_daily fails, and in the load's transaction it would abort the load. The load
    # goes in all the same (made again, its views after the commit, as before), and the other views
    # show its rows.
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    path = config.warehouse_url[len("duckdb://"):]
    con = duckdb.connect(path)
    con.execute(f"CREATE SCHEMA {DATASET}; CREATE TABLE {DATASET}.metric_daily (x INTEGER)")
    con.close()
    wh = DuckDBWarehouse(path)
    try:
        key = put(store, make_ping(A, {"counter": {"toolbox.launch_count": 2}}), "baseline", DAY1)
        assert Loader(store, wh).load_keys([key]).inserted == 1
        assert rows(wh, f"SELECT count(*) AS n FROM {DATASET}.baseline") == [{"n": 1}]
        assert rows(wh, f"SELECT CAST(day AS VARCHAR) AS day, clients FROM {DATASET}.daily_active_clients") == [
            {"day": "2026-11-21", "clients": 1}]
        assert "Existing object \"metric_daily\" is of type Table" in caplog.text  # the reason, logged
    finally:
        wh.close()


def test_view_days_are_utc_days_in_any_session_zone(loaded, config):
    """The views are SQL stored in the file, read by any DuckDB client ("Days are UTC", views.py).
    A session in Tokyo (UTC+9) must still count DAY1 (23:59:59 UTC) and DAY2 (00:00:01 UTC) on
    their UTC days, not both on 2026-11-22."""
    loaded.close()
    con = duckdb.connect(config.warehouse_url[len("duckdb://"):], read_only=True)
    try:
        con.execute("SET TimeZone = 'Asia/Tokyo'")
        dau = con.execute(f"SELECT CAST(day AS VARCHAR), clients, pings FROM {DATASET}.daily_active_clients "
                          "ORDER BY 1").fetchall()
        assert dau == [("2026-11-21", 2, 3), ("2026-11-22", 1, 1)]
        assert con.execute(f"SELECT CAST(day AS VARCHAR), events FROM {DATASET}.events_daily").fetchall() == [
            ("2026-11-22", 2)]
        counter = con.execute(f"SELECT CAST(day AS VARCHAR), sum_value FROM {DATASET}.metric_daily "
                              "WHERE metric = 'toolbox_launch_count' ORDER BY 1").fetchall()
        assert counter == [("2026-11-21", 10.0), ("2026-11-22", 7.0)]
    finally:
        con.close()


def test_metric_daily_sums_doubles_so_a_huge_counter_cannot_fail_bigquerys_view():
    """BigQuery's SUM of INT64 fails on overflow ("Int64 overflow"), and metric_daily is one
    UNION ALL per app: a client sending a counter near 2^63 would fail the whole view. bqemulator
    runs on DuckDB, whose sum of BIGINT widens to HUGEINT, so it cannot show the failure; the
    BigQuery SQL is checked instead: every SUM in every part is of a double."""
    import re

    from gleanpipe.views import BIGQUERY, DUCKDB, metric_part

    for mtype in sorted(AGGREGATED_TYPES):
        for dialect, double in ((BIGQUERY, "FLOAT64"), (DUCKDB, "DOUBLE")):
            sql = metric_part("src", "metrics_v1", mtype, ["toolbox_x"], dialect)
            sums = re.findall(r"(?i)\bsum\((.*?)\)", sql)
            assert len(sums) >= 4, (mtype, sql)  # samples, sum_value and avg_value's two
            assert all(s.startswith("CAST(") and s.endswith(f" AS {double}") for s in sums), (mtype, dialect, sums)


def test_metric_daily_sums_counters_near_2_to_the_63(store, warehouse):
    keys = [put(store, make_ping(A, metrics={"counter": {"toolbox.big": v}}), "metrics", DAY1) for v in (2**63 - 1, 1000)]
    assert Loader(store, warehouse).load_keys(keys).inserted == 2
    [r] = metric(warehouse, "toolbox_big")
    assert (r["pings"], r["samples"], r["sum_value"], r["max_value"]) == (2, 2.0, 2.0**63 + 1000, 2.0**63)


def test_opening_a_file_makes_the_derived_views_of_every_app_and_of_no_internal_schema(tmp_path):
    """A file whose tables have no derived views yet (an older version, a copy): opening it makes
    them in each app's schema, not in the first one only, and none in a schema starting with "_"."""
    from gleanpipe.warehouse import open_warehouse

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for schema, clients in (("app_one", ["a"]), ("app_two", ["a", "b", "b"]), ("_private", ["c"])):
        con.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.baseline_v1 (document_id VARCHAR, "
                    "submission_timestamp TIMESTAMPTZ, client_info STRUCT(client_id VARCHAR))")
        for i, client in enumerate(clients):
            con.execute(f"INSERT INTO {schema}.baseline_v1 VALUES (?, TIMESTAMPTZ '2026-11-21 10:00:00+00', "
                        "{'client_id': ?})", [f"d{i}", client])
    con.close()
    wh = open_warehouse(f"duckdb://{path}")
    try:
        for schema, want in (("app_one", [("2026-11-21", 1, 1)]), ("app_two", [("2026-11-21", 2, 3)])):
            assert wh.query(f"SELECT CAST(day AS VARCHAR), clients, pings FROM {schema}.daily_active_clients")[1] == want
        assert wh.query("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND view_name IN "
                        "('daily_active_clients', 'events_daily', 'metric_daily') ORDER BY 1, 2")[1] == [
            (schema, view) for schema in ("app_one", "app_two")
            for view in ("daily_active_clients", "events_daily", "metric_daily")]
    finally:
        wh.close()


def test_metric_daily_lists_together_only_metrics_of_one_value_type(tmp_path):
    """metric_daily unnests one list of (metric, value) per metric type, and a list has one type: a
    counter stored as text (in a table another tool made) in the list of its BIGINT neighbours made
    DuckDB refuse the view, so the app had no metric_daily at all. Columns of another value type go
    in a list of their own, and each metric gives the rows it gave alone."""
    from gleanpipe.views import view_sql
    from gleanpipe.warehouse import open_warehouse

    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA app_x; CREATE TABLE app_x.metrics_v1 (document_id VARCHAR, submission_timestamp "
                "TIMESTAMPTZ, client_info STRUCT(client_id VARCHAR), metrics STRUCT(counter STRUCT(a BIGINT, "
                "b VARCHAR, c BIGINT)))")
    for i, (a, b) in enumerate([(9, "9"), (10, "10")]):
        con.execute("INSERT INTO app_x.metrics_v1 VALUES (?, TIMESTAMPTZ '2026-11-21 10:00:00+00', {'client_id': ?}, "
                    "{'counter': {'a': ?, 'b': ?, 'c': ?}})", [f"d{i}", f"c{i}", a, b, a + 1])
    assert view_sql(con, "app_x")["metric_daily"].count("UNION ALL") == 1  # a and c together, b alone
    con.close()
    wh = open_warehouse(f"duckdb://{path}")
    try:
        got = wh.query("SELECT metric, pings, clients, sum_value, min_value, max_value FROM app_x.metric_daily "
                       "ORDER BY metric")[1]
        assert got[0] == ("a", 2, 2, 19.0, 9.0, 10.0) and got[2] == ("c", 2, 2, 21.0, 10.0, 11.0)
        assert got[1][:4] == ("b", 2, 2, 19.0)  # compared as the text it is, as before
    finally:
        wh.close()


def test_metric_daily_leaves_out_the_types_it_does_not_aggregate_and_counts_the_others(store, warehouse):
    """Columns of types metric_daily does not aggregate (uuid, url, text, jwe, datetime, string_list,
    object) beside ones it does, in one table: they get no part (an UNNEST of a JSON or VARCHAR value
    would make DuckDB refuse the whole view), and the others their rows. No test had such a column
    in a table metric_daily reads; a mutant that gave them a part survived (review30)."""
    others = {"uuid": {"toolbox.install_id": str(uuid.UUID(int=1))}, "url": {"toolbox.home": "https://example.com/"},
              "text": {"toolbox.note": "hi"}, "jwe": {"toolbox.secret": "a.b.c.d.e"},
              "datetime": {"toolbox.at": "2026-11-21T10:00:00+00:00"}, "string_list": {"toolbox.tags": ["a"]},
              "object": {"toolbox.obj": {"a": [1, 2]}}}
    assert not set(others) & set(AGGREGATED_TYPES)
    keys = [put(store, make_ping(A, {**others, "counter": {"toolbox.n": 4}}), "metrics", DAY1),
            put(store, make_ping(B, {"counter": {"toolbox.n": 6}}), "metrics", DAY1)]
    assert Loader(store, warehouse).load_keys(keys).inserted == 2
    assert rows(warehouse, f"SELECT metric_type, metric, pings, clients, sum_value FROM {DATASET}.metric_daily") == [
        {"metric_type": "counter", "metric": "toolbox_n", "pings": 2, "clients": 2, "sum_value": 10.0}]
