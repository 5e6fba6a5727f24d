"""Derived views (views.py) on a real DuckDB file, from hand-built pings with known values."""

from __future__ import annotations

import json
import uuid

import pytest

from gleanpipe import rawobject
from gleanpipe.load import Loader
from gleanpipe.naming import DocumentPath

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
        }), "metrics", DAY1),
        put(store, make_ping(B, {
            "quantity": {"toolbox.open_windows": 8},
            "boolean": {"toolbox.dark_mode_enabled": False},
            "labeled_counter": {"toolbox.tool_used": {"hammer": 5}},
            "timing_distribution": {"toolbox.render_time": dist({200: 1}, 250)},
            "rate": {"toolbox.cache_hit_rate": {"numerator": 1, "denominator": 4}},
            "string": {"toolbox.active_theme": "dark"},
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

