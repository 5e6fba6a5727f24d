"""Derived views shipped with gleanpipe, created in each app's schema (DuckDB) or dataset (BigQuery).

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

``build_views`` writes the SQL in either dialect (``DUCKDB``, ``BIGQUERY``) from the tables of a
dataset and their metric columns; the BigQuery warehouse reads those from the API and creates or
updates the views itself (warehouse/bigquery.py, ``_refresh_views``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .naming import DERIVED_VIEWS, TABLE_RE, quote_bq_ident as bq_quote, quote_ident as q
from .table_schema import EVENTS_STREAM_TABLE

VIEW_NAMES = DERIVED_VIEWS
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


@dataclass(frozen=True)
class Dialect:
    """What the view SQL says differently in DuckDB and in BigQuery (identifiers are [A-Za-z0-9_]
    only, naming.quote_ident, so they and the literals made of them need no escaping)."""

    day: str  # UTC day of submission_timestamp
    types: dict  # DuckDB type name -> this dialect's, where they differ
    quote: Callable[[str], str]
    dist_n: Callable[[str], str]  # samples in a distribution value: the sum of its bucket counts
    # (cols, src, ref, alias) -> SELECT cols and one row per element of the list ref (as alias) from src
    unnest: Callable[[str, str, str, str], str]
    empty_from: str  # FROM of a SELECT that returns no row
    # (cols, src, list, alias) -> SELECT cols and one row per element of a list literal (as alias) from src
    unnest_list: Callable[[str, str, str, str], str]
    struct: Callable[[tuple[tuple[str, str], ...]], str]  # ((field name, expression), ...) -> a STRUCT value

    def type(self, duck_type: str) -> str:
        return self.types.get(duck_type, duck_type)


DUCKDB = Dialect(day=DAY, types={}, quote=q, empty_from="",
                 dist_n=lambda ref: f"list_sum(list_transform({ref}.\"values\", lambda b: b.value))",
                 unnest=lambda cols, src, ref, alias:
                     f"SELECT {cols}, UNNEST({ref}) AS {alias} FROM {src} WHERE {ref} IS NOT NULL",
                 unnest_list=lambda cols, src, lst, alias: f"SELECT {cols}, UNNEST({lst}) AS {alias} FROM {src}",
                 struct=lambda fields: "{" + ", ".join(f"'{n}': {e}" for n, e in fields) + "}")
BIGQUERY = Dialect(day="DATE(submission_timestamp)",
                   types={"INTEGER": "INT64", "BIGINT": "INT64", "DOUBLE": "FLOAT64", "VARCHAR": "STRING"},
                   quote=bq_quote, empty_from=" FROM UNNEST([1])",
                   dist_n=lambda ref: f"(SELECT SUM(CAST(b.value AS FLOAT64)) FROM UNNEST({ref}.`values`) AS b)",
                   unnest=lambda cols, src, ref, alias:
                       f"SELECT {cols}, u AS {alias} FROM {src} CROSS JOIN UNNEST({ref}) AS u",
                   unnest_list=lambda cols, src, lst, alias:
                       f"SELECT {cols}, u AS {alias} FROM {src} CROSS JOIN UNNEST({lst}) AS u",
                   struct=lambda fields: "STRUCT(" + ", ".join(f"{e} AS {n}" for n, e in fields) + ")")


def _lit(value: str) -> str:
    q(value)  # [A-Za-z0-9_] only: a literal the same in both dialects
    return f"'{value}'"


def _cast(d: Dialect, ref: str, duck_type: str) -> str:
    return f"CAST({ref} AS {d.type(duck_type)})"


def _scalar(d: Dialect, mtype: str, ref: str) -> str:
    if mtype == "boolean":
        return _cast(d, ref, "INTEGER")
    if mtype == "timespan":
        return f"{ref}.value"
    return ref


def _metric_rows(src: str, mtype: str, columns: list[str], d: Dialect) -> str:
    """(day, cid, metric, x) for every value of these metric columns (of type ``mtype``, all of one
    value type) that is not NULL: one row per ping and metric, from one list of (name, value)
    structs per row, so the SQL is one SELECT whatever the number of metrics."""
    elems = ", ".join(d.struct((("metric", _lit(c)), ("x", f"metrics.{d.quote(mtype)}.{d.quote(c)}")))
                      for c in columns)
    each = d.unnest_list(f"{d.day} AS day, client_info.client_id AS cid", src, f"[{elems}]", "m")
    return f"SELECT day, cid, m.metric AS metric, m.x AS x FROM ({each}) WHERE m.x IS NOT NULL"


def metric_part(src: str, table: str, mtype: str, columns: list[str], d: Dialect) -> str | None:
    """SELECT of metric_daily's columns for metric columns of one type whose values have one
    type (one column, or several) of the table ``src`` refers to (named ``table``), or None for types
    not aggregated.

    Every part first builds (day, cid, metric, label, v, n, mm): v is summed, n counts samples (the
    average is sum(v)/sum(n)), mm feeds min/max. Sums are of doubles: BigQuery's SUM of INT64
    fails on overflow, and one client's counter near 2^63 would fail the app's whole view.
    """
    if mtype not in AGGREGATED_TYPES:
        return None
    src = f"({_metric_rows(src, mtype, columns, d)})"
    ref = "x"
    base = "day, cid, metric"
    no_label, no_mm = _cast(d, "NULL", "VARCHAR"), _cast(d, "NULL", "DOUBLE")
    if mtype in SCALAR:
        inner = f"SELECT {base}, {no_label} AS label, {_scalar(d, mtype, ref)} AS v, 1 AS n, " \
                f"{_scalar(d, mtype, ref)} AS mm FROM {src}"
    elif mtype == "string":
        inner = f"SELECT {base}, {ref} AS label, 1 AS v, 1 AS n, {no_mm} AS mm FROM {src}"
    elif mtype in DISTRIBUTIONS:
        inner = f"SELECT {base}, {no_label} AS label, {ref}.sum AS v, {d.dist_n(ref)} AS n, {no_mm} AS mm FROM {src}"
    elif mtype == "rate":
        inner = f"SELECT {base}, {no_label} AS label, {ref}.numerator AS v, {ref}.denominator AS n, {no_mm} AS mm " \
                f"FROM {src}"
    else:  # labeled_*, dual_labeled_counter
        unnested = d.unnest(base, src, ref, "l")
        if mtype in LABELED_SCALAR:
            value = _scalar(d, mtype[len("labeled_"):], "l.value")
            cols = f"l.key AS label, {value} AS v, 1 AS n, {value} AS mm"
        elif mtype in LABELED_DISTRIBUTIONS:
            cols = f"l.key AS label, l.value.sum AS v, {d.dist_n('l.value')} AS n, {no_mm} AS mm"
        elif mtype == "labeled_rate":
            cols = f"l.key AS label, l.value.numerator AS v, l.value.denominator AS n, {no_mm} AS mm"
        else:  # dual_labeled_counter: one more level of labels
            unnested = d.unnest(f"{base}, l.key AS k1", f"({unnested})", "l.value", "l")
            cols = "k1 || '/' || l.key AS label, l.value AS v, 1 AS n, l.value AS mm"
        inner = f"SELECT {base}, {cols} FROM ({unnested})"
    double = d.type("DOUBLE")
    return (
        f"SELECT day, {_lit(table)} AS ping_table, {_lit(mtype)} AS metric_type, metric, "
        f"label, count(*) AS pings, count(DISTINCT cid) AS clients, sum(CAST(n AS {double})) AS samples, "
        f"sum(CAST(v AS {double})) AS sum_value, "
        f"sum(CAST(v AS {double})) / NULLIF(sum(CAST(n AS {double})), 0) AS avg_value, "
        f"CAST(min(mm) AS {double}) AS min_value, CAST(max(mm) AS {double}) AS max_value "
        f"FROM ({inner}) GROUP BY day, metric, label"
    )


def _empty(columns, d: Dialect) -> str:
    return "SELECT " + ", ".join(f"{_cast(d, 'NULL', c.split()[1])} AS {c.split()[0]}" for c in columns) \
        + f"{d.empty_from} WHERE false"


def build_views(tables: dict[str, list[tuple]], ref: Callable[[str, bool], str],
                d: Dialect) -> dict[str, str]:
    """The SELECT behind each view of one app's dataset, from its tables now: ``tables`` maps each
    table name to its (metric type, column) pairs, ``ref(table, metrics)`` makes a table name a
    reference (``metrics``: the view reads the table's ``metrics`` column). A pair can carry a third
    item, the column's value type (anything comparable): metric_daily lists only columns of one
    type and one value type together."""
    ping_tables = sorted(t for t in tables if TABLE_RE.fullmatch(t))
    # an alias, so a subquery can be a source too
    source = lambda table, metrics=False: f"{ref(table, metrics)} AS p"  # noqa: E731
    out = {}
    if "baseline_v1" in ping_tables:
        out["daily_active_clients"] = (
            f"SELECT {d.day} AS day, count(DISTINCT client_info.client_id) AS clients, count(*) AS pings "
            f"FROM {source('baseline_v1')} GROUP BY day")
    else:
        out["daily_active_clients"] = _empty(("day DATE", "clients BIGINT", "pings BIGINT"), d)
    if EVENTS_STREAM_TABLE in tables:
        out["events_daily"] = (
            f"SELECT {d.day} AS day, category, name, count(*) AS events, count(DISTINCT client_id) AS clients "
            f"FROM {source(EVENTS_STREAM_TABLE)} GROUP BY day, category, name")
    else:
        out["events_daily"] = _empty(("day DATE", "category VARCHAR", "name VARCHAR", "events BIGINT",
                                      "clients BIGINT"), d)
    parts = []
    for t in ping_tables:
        # one part per metric type and value type: the values of one list must have one type, and a
        # column's type is the one it was made with (a table from an older version, or widened on
        # BigQuery, can hold two metrics of one type with different STRUCTs)
        groups: dict[tuple, list[str]] = {}
        for mtype, col, *value_type in tables[t]:
            groups.setdefault((mtype, *value_type), []).append(col)
        parts += [p for (mtype, *_), cols in groups.items() if (p := metric_part(source(t, True), t, mtype, cols, d))]
    out["metric_daily"] = "\nUNION ALL\n".join(parts) if parts else _empty(METRIC_DAILY_COLUMNS, d)
    return out


def metric_columns(con, dataset: str, table: str) -> list[tuple[str, str, str]]:
    """(metric type, column, its DuckDB type) of a table's ``metrics`` STRUCT."""
    has = con.execute("SELECT 1 FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
                      "AND column_name = 'metrics'", [dataset, table]).fetchall()
    if not has:
        return []
    struct = con.sql(f"SELECT metrics FROM {q(dataset)}.{q(table)} LIMIT 0").types[0]
    return [(mtype, col, str(ctype)) for mtype, t in struct.children for col, ctype in t.children]


def view_sql(con, dataset: str) -> dict[str, str]:
    """The SELECT behind each view of one app's schema in the DuckDB file, from the tables it has now."""
    names = [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? ORDER BY 1", [dataset]).fetchall()]
    tables = {t: metric_columns(con, dataset, t) if TABLE_RE.fullmatch(t) else [] for t in names}
    return build_views(tables, lambda table, metrics: f"{q(dataset)}.{q(table)}", DUCKDB)


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
