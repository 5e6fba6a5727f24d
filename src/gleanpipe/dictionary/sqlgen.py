"""Ready-to-run SQL for one metric, for DuckDB (local) and BigQuery (same tables, same columns).

Identifiers come from checked names (naming.quote_ident for DuckDB; the same safe charset in
BigQuery backticks); event category/name are SQL string literals, quoted as each dialect reads them.
"""

from __future__ import annotations

from ..naming import IDENT_RE, view_name
from ..table_schema import EVENTS_STREAM_TABLE

DIALECTS = ("duckdb", "bigquery")


def _ident(name: str) -> str:
    if not IDENT_RE.fullmatch(name):
        raise ValueError(f"not a safe identifier: {name!r}")
    return name


def _lit(value: str, dialect: str) -> str:
    """A string literal: DuckDB's doubles a quote and takes a backslash as it is; BigQuery's
    escapes both with a backslash ('' there ends one literal and starts another), and its quoted
    strings cannot hold a newline."""
    text = str(value)
    if dialect == "bigquery":
        text = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    else:
        text = text.replace("'", "''")
    return f"'{text}'"


def utc_day(dialect: str) -> str:
    """The UTC day of a ping. DuckDB's DATE() of a TIMESTAMPTZ takes the session's time zone:
    `gleanpipe query` sets UTC, but this SQL is for pasting into any DuckDB client."""
    return "DATE(submission_timestamp)" if dialect == "bigquery" else "CAST(timezone('UTC', submission_timestamp) AS DATE)"


def table_ref(dataset: str, table: str, dialect: str) -> str:
    """What the query reads: the table's deduplicated view (``baseline`` over ``baseline_v1``; on
    BigQuery streaming can leave copies that only the view hides), or the table if it has none."""
    ping, sep, version = table.rpartition("_v")
    view = view_name(ping) if sep and version.isdigit() and ping else None
    if view:
        table = view
    ref = f"{_ident(dataset)}.{_ident(table)}"
    return f"`{ref}`" if dialect == "bigquery" else ref


def metric_sql(dialect: str, dataset: str, table: str, wire_type: str | None, column: str, *,
               event: tuple[str, str] | None = None) -> str:
    """A query that answers "what does this metric look like over time" for its type."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    values = '"values"' if dialect == "duckdb" else "values"
    day = f"{utc_day(dialect)} AS day"
    if event is not None:
        category, name = event
        return (f"SELECT {day}, COUNT(*) AS events, COUNT(DISTINCT client_id) AS clients\n"
                f"FROM {table_ref(dataset, EVENTS_STREAM_TABLE, dialect)}\n"
                f"WHERE category = {_lit(category, dialect)} AND name = {_lit(name, dialect)}\n"
                "GROUP BY day\nORDER BY day")
    # The table gets an alias: in BigQuery the name of the `metrics` table would otherwise win over
    # its `metrics` column (Mozilla's docs alias it for this reason); DuckDB takes either.
    src = f"{table_ref(dataset, table, dialect)} AS p"
    col = f"p.metrics.{_ident(wire_type)}.{_ident(column)}"
    where = f"WHERE {col} IS NOT NULL\n"
    if wire_type == "counter":
        sel = f"SUM({col}) AS total, COUNT(DISTINCT client_info.client_id) AS clients"
    elif wire_type == "quantity":
        sel = f"AVG({col}) AS average, MAX({col}) AS maximum, COUNT(*) AS pings"
    elif wire_type == "boolean":
        sel = f"SUM(CASE WHEN {col} THEN 1 ELSE 0 END) AS true_count, COUNT(*) AS pings"
    elif wire_type == "timespan":
        sel = f"ANY_VALUE({col}.time_unit) AS time_unit, AVG({col}.value) AS average, MAX({col}.value) AS maximum"
    elif wire_type == "rate":
        sel = (f"SUM({col}.numerator) AS numerator, SUM({col}.denominator) AS denominator, "
               f"SUM({col}.numerator) / NULLIF(SUM({col}.denominator), 0) AS ratio")
    elif wire_type == "string":
        return (f"SELECT {col} AS value, COUNT(*) AS pings\nFROM {src}\n{where}"
                "GROUP BY value\nORDER BY pings DESC\nLIMIT 20")
    elif wire_type in ("timing_distribution", "memory_distribution", "custom_distribution"):
        return (f"SELECT {day}, bucket.key AS bucket, SUM(bucket.value) AS samples\n"
                f"FROM {src}, UNNEST({col}.{values}) AS bucket\n"
                "GROUP BY 1, 2\nORDER BY 1, 2")
    elif wire_type in ("labeled_timing_distribution", "labeled_memory_distribution", "labeled_custom_distribution"):
        return (f"SELECT {day}, label.key AS label, bucket.key AS bucket, SUM(bucket.value) AS samples\n"
                f"FROM {src}, UNNEST({col}) AS label, UNNEST(label.value.{values}) AS bucket\n"
                "GROUP BY 1, 2, 3\nORDER BY 1, 2, 3")
    elif wire_type == "labeled_rate":
        return (f"SELECT {day}, label.key AS label, SUM(label.value.numerator) AS numerator, "
                "SUM(label.value.denominator) AS denominator\n"
                f"FROM {src}, UNNEST({col}) AS label\nGROUP BY 1, 2\nORDER BY 1, 2")
    elif wire_type == "labeled_boolean":
        return (f"SELECT {day}, label.key AS label, SUM(CASE WHEN label.value THEN 1 ELSE 0 END) AS true_count, "
                f"COUNT(*) AS pings\nFROM {src}, UNNEST({col}) AS label\nGROUP BY 1, 2\nORDER BY 1, 2")
    elif wire_type == "labeled_string":
        return (f"SELECT label.key AS label, label.value AS value, COUNT(*) AS pings\n"
                f"FROM {src}, UNNEST({col}) AS label\nGROUP BY 1, 2\nORDER BY pings DESC\nLIMIT 20")
    elif wire_type in ("labeled_counter", "labeled_quantity"):
        agg = "SUM" if wire_type == "labeled_counter" else "AVG"
        return (f"SELECT {day}, label.key AS label, {agg}(label.value) AS value\n"
                f"FROM {src}, UNNEST({col}) AS label\nGROUP BY 1, 2\nORDER BY 1, 3 DESC")
    elif wire_type == "dual_labeled_counter":
        return (f"SELECT {day}, outer_label.key AS label, inner_label.key AS category, "
                "SUM(inner_label.value) AS total\n"
                f"FROM {src}, UNNEST({col}) AS outer_label, UNNEST(outer_label.value) AS inner_label\n"
                "GROUP BY 1, 2, 3\nORDER BY 1, 4 DESC")
    else:  # uuid, url, text, jwe, datetime, string_list, object: the latest values
        return (f"SELECT submission_timestamp, client_info.client_id, {col} AS value\nFROM {src}\n{where}"
                "ORDER BY submission_timestamp DESC\nLIMIT 100")
    return f"SELECT {day}, {sel}\nFROM {src}\n{where}GROUP BY day\nORDER BY day"
