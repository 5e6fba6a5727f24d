"""Derived views shipped with gleanpipe, created in each app's schema of the DuckDB warehouse.

- ``<app>.daily_active_clients``: day, clients (distinct client ids in baseline pings), pings.
- ``<app>.events_daily``: day, category, name, events, clients (from events_stream).
- ``<app>.metric_daily``: one row per day, ping table, metric (and label): pings, clients,
  samples, sum_value, avg_value, min_value, max_value. What each means per metric type:

  | metric type | label | samples | sum_value | avg_value | min/max_value |
  | counter, quantity, timespan (value) | - | pings | sum | mean | min/max |
  | boolean | - | pings | pings with true | share true | 0/1 |
  | labeled_counter/quantity/boolean | label | pings | sum | mean | min/max |
  | dual_labeled_counter | "key/category" | pings | sum | mean | min/max |
  | timing/memory/custom distribution (and labeled_*) | label | samples recorded | sum of sums | mean sample | - |
  | rate (and labeled_rate) | label | sum of denominators | sum of numerators | numerator/denominator | - |
  | string | the value | pings | pings | 1 | - |

Plain SQL views (CREATE OR REPLACE: idempotent), so they work from `gleanpipe query`, the
dictionary and anything else that opens the file. The column list of ``metric_daily`` is
fixed, its body is rebuilt from the metric columns the tables have (``refresh``); the
warehouse calls ``refresh`` after every change of a table's shape. Days are UTC.
"""

from __future__ import annotations

import re

from .naming import TABLE_RE, quote_ident as q
from .table_schema import EVENTS_STREAM_TABLE

VIEW_NAMES = ("daily_active_clients", "events_daily", "metric_daily")
DAY = "CAST(timezone('UTC', submission_timestamp) AS DATE)"

METRIC_DAILY_COLUMNS = ("day DATE", "ping_table VARCHAR", "metric_type VARCHAR", "metric VARCHAR",
                        "label VARCHAR", "pings BIGINT", "clients BIGINT", "samples DOUBLE",
                        "sum_value DOUBLE", "avg_value DOUBLE", "min_value DOUBLE", "max_value DOUBLE")

SCALAR = ("counter", "quantity", "boolean", "timespan")
LABELED_SCALAR = ("labeled_counter", "labeled_quantity", "labeled_boolean")
DISTRIBUTIONS = ("timing_distribution", "memory_distribution", "custom_distribution")
LABELED_DISTRIBUTIONS = tuple(f"labeled_{t}" for t in DISTRIBUTIONS)
AGGREGATED_TYPES = SCALAR + LABELED_SCALAR + DISTRIBUTIONS + LABELED_DISTRIBUTIONS + (
    "rate", "labeled_rate", "dual_labeled_counter", "string")


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _scalar(mtype: str, ref: str) -> str:
    if mtype == "boolean":
        return f"CAST({ref} AS INTEGER)"
    if mtype == "timespan":
        return f"{ref}.value"
    return ref


def _dist_n(ref: str) -> str:
    return f"list_sum(list_transform({ref}.\"values\", lambda b: b.value))"


def metric_part(dataset: str, table: str, mtype: str, column: str) -> str | None:
    """SELECT of metric_daily's columns for one metric column, or None for types not aggregated.

    Every part first builds (day, cid, label, v, n, mm): v is summed, n counts samples (the
    average is sum(v)/sum(n)), mm feeds min/max.
    """
    ref = f"metrics.{q(mtype)}.{q(column)}"
    src = f"{q(dataset)}.{q(table)}"
    base = f"{DAY} AS day, client_info.client_id AS cid"
    if mtype in SCALAR:
        inner = f"SELECT {base}, NULL AS label, {_scalar(mtype, ref)} AS v, 1 AS n, {_scalar(mtype, ref)} AS mm " \
                f"FROM {src} WHERE {ref} IS NOT NULL"
    elif mtype == "string":
        inner = f"SELECT {base}, {ref} AS label, 1 AS v, 1 AS n, NULL AS mm FROM {src} WHERE {ref} IS NOT NULL"
    elif mtype in DISTRIBUTIONS:
        inner = f"SELECT {base}, NULL AS label, {ref}.sum AS v, {_dist_n(ref)} AS n, NULL AS mm " \
                f"FROM {src} WHERE {ref} IS NOT NULL"
    elif mtype == "rate":
        inner = f"SELECT {base}, NULL AS label, {ref}.numerator AS v, {ref}.denominator AS n, NULL AS mm " \
                f"FROM {src} WHERE {ref} IS NOT NULL"
    elif mtype in LABELED_SCALAR or mtype in LABELED_DISTRIBUTIONS or mtype in ("labeled_rate", "dual_labeled_counter"):
        unnested = f"SELECT {base}, UNNEST({ref}) AS l FROM {src} WHERE {ref} IS NOT NULL"
        if mtype in LABELED_SCALAR:
            cols = f"l.key AS label, {_scalar(mtype[len('labeled_'):], 'l.value')} AS v, 1 AS n, " \
                   f"{_scalar(mtype[len('labeled_'):], 'l.value')} AS mm"
        elif mtype in LABELED_DISTRIBUTIONS:
            cols = f"l.key AS label, l.value.sum AS v, {_dist_n('l.value')} AS n, NULL AS mm"
        elif mtype == "labeled_rate":
            cols = "l.key AS label, l.value.numerator AS v, l.value.denominator AS n, NULL AS mm"
        else:  # dual_labeled_counter: one more level of labels
            unnested = f"SELECT day, cid, l.key AS k1, UNNEST(l.value) AS l FROM ({unnested})"
            cols = "k1 || '/' || l.key AS label, l.value AS v, 1 AS n, l.value AS mm"
        inner = f"SELECT day, cid, {cols} FROM ({unnested})"
    else:
        return None
    return (
        f"SELECT day, {_lit(table)} AS ping_table, {_lit(mtype)} AS metric_type, {_lit(column)} AS metric, "
        "label, count(*) AS pings, count(DISTINCT cid) AS clients, CAST(sum(n) AS DOUBLE) AS samples, "
        "CAST(sum(v) AS DOUBLE) AS sum_value, CAST(sum(v) AS DOUBLE) / NULLIF(CAST(sum(n) AS DOUBLE), 0) AS avg_value, "
        "CAST(min(mm) AS DOUBLE) AS min_value, CAST(max(mm) AS DOUBLE) AS max_value "
        f"FROM ({inner}) GROUP BY day, label"
    )


def _empty(columns) -> str:
    return "SELECT " + ", ".join(f"CAST(NULL AS {c.split()[1]}) AS {c.split()[0]}" for c in columns) + " WHERE false"


def metric_columns(con, dataset: str, table: str) -> list[tuple[str, str]]:
    """(metric type, column) pairs of a table's ``metrics`` STRUCT."""
    has = con.execute("SELECT 1 FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
                      "AND column_name = 'metrics'", [dataset, table]).fetchall()
    if not has:
        return []
    struct = con.sql(f"SELECT metrics FROM {q(dataset)}.{q(table)} LIMIT 0").types[0]
    return [(mtype, col) for mtype, t in struct.children for col, _ in t.children]


def view_sql(con, dataset: str) -> dict[str, str]:
    """The SELECT behind each view of one app's schema, from the tables it has now."""
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? ORDER BY 1", [dataset]).fetchall()]
    ping_tables = [t for t in tables if TABLE_RE.fullmatch(t)]
    out = {}
    if "baseline_v1" in ping_tables:
        out["daily_active_clients"] = (
            f"SELECT {DAY} AS day, count(DISTINCT client_info.client_id) AS clients, count(*) AS pings "
            f"FROM {q(dataset)}.baseline_v1 GROUP BY day")
    else:
        out["daily_active_clients"] = _empty(("day DATE", "clients BIGINT", "pings BIGINT"))
    if EVENTS_STREAM_TABLE in tables:
        out["events_daily"] = (
            f"SELECT {DAY} AS day, category, name, count(*) AS events, count(DISTINCT client_id) AS clients "
            f"FROM {q(dataset)}.{q(EVENTS_STREAM_TABLE)} GROUP BY day, category, name")
    else:
        out["events_daily"] = _empty(("day DATE", "category VARCHAR", "name VARCHAR", "events BIGINT",
                                      "clients BIGINT"))
    parts = [p for t in ping_tables for mtype, col in metric_columns(con, dataset, t)
             if (p := metric_part(dataset, t, mtype, col))]
    out["metric_daily"] = "\nUNION ALL\n".join(parts) if parts else _empty(METRIC_DAILY_COLUMNS)
    return out


def app_datasets(con) -> list[str]:
    """Schemas that hold ping tables (one per app)."""
    rows = con.execute("SELECT DISTINCT schema_name FROM duckdb_tables() WHERE database_name = current_database() "
                       "AND schema_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY 1").fetchall()
    return [r[0] for r in rows if re.fullmatch(r"[a-z0-9][a-z0-9_]*", r[0])]


def refresh(con, datasets=None) -> list[str]:
    """CREATE OR REPLACE every view of the given (default: all) app schemas; returns the views."""
    done = []
    for dataset in datasets if datasets is not None else app_datasets(con):
        for name, sql in view_sql(con, dataset).items():
            con.execute(f"CREATE OR REPLACE VIEW {q(dataset)}.{q(name)} AS {sql}")
            done.append(f"{dataset}.{name}")
    return done
