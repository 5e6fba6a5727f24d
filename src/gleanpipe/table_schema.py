"""Column types of the ping tables, per Glean metric type, independent of any warehouse.

A small type tree (``T``) renders to DuckDB type strings here and, later, to BigQuery
schema fields, so the local and cloud tables share one layout:
STRUCT <-> RECORD, LIST <-> REPEATED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class T:
    kind: str  # BOOLEAN BIGINT DOUBLE VARCHAR TIMESTAMPTZ JSON STRUCT LIST
    fields: tuple[tuple[str, "T"], ...] = ()
    item: "T | None" = None

    def duckdb(self) -> str:
        if self.kind == "STRUCT":
            return "STRUCT(" + ", ".join(f'"{n}" {t.duckdb()}' for n, t in self.fields) + ")"
        if self.kind == "LIST":
            return f"{self.item.duckdb()}[]"
        return self.kind

    def bigquery(self, name: str, mode: str = "NULLABLE") -> dict:
        """This type as a BigQuery schema field (API form): STRUCT -> RECORD, LIST -> REPEATED."""
        if self.kind == "LIST":
            if self.item.kind == "LIST":
                raise ValueError(f"{name}: BigQuery has no list of lists")
            return self.item.bigquery(name, "REPEATED")
        if self.kind == "STRUCT":
            return {"name": name, "type": "RECORD", "mode": mode,
                    "fields": [t.bigquery(n) for n, t in self.fields]}
        return {"name": name, "type": BIGQUERY_TYPES[self.kind], "mode": mode}


BIGQUERY_TYPES = {"BOOLEAN": "BOOLEAN", "BIGINT": "INTEGER", "DOUBLE": "FLOAT", "VARCHAR": "STRING",
                  "TIMESTAMPTZ": "TIMESTAMP", "JSON": "JSON"}


def struct(**fields: T) -> T:
    return T("STRUCT", tuple(fields.items()))


def list_of(item: T) -> T:
    return T("LIST", item=item)


BOOL, INT, FLOAT, STR, TS, JSON = T("BOOLEAN"), T("BIGINT"), T("DOUBLE"), T("VARCHAR"), T("TIMESTAMPTZ"), T("JSON")


def key_value(value: T, key: T = STR) -> T:
    return list_of(struct(key=key, value=value))


TIMESPAN = struct(time_unit=STR, value=INT)
RATE = struct(numerator=INT, denominator=INT)
DISTRIBUTION = struct(sum=INT, values=key_value(INT, key=INT))

# Glean metric type (the key under "metrics" in a ping) -> column type.
METRIC_TYPES: dict[str, T] = {
    "boolean": BOOL,
    "counter": INT,
    "quantity": INT,
    "string": STR,
    "uuid": STR,
    "url": STR,
    "text": STR,
    "jwe": STR,
    "datetime": STR,
    "string_list": list_of(STR),
    "timespan": TIMESPAN,
    "rate": RATE,
    "timing_distribution": DISTRIBUTION,
    "memory_distribution": DISTRIBUTION,
    "custom_distribution": DISTRIBUTION,
    "labeled_boolean": key_value(BOOL),
    "labeled_counter": key_value(INT),
    "labeled_quantity": key_value(INT),
    "labeled_string": key_value(STR),
    "labeled_rate": key_value(RATE),
    "labeled_timing_distribution": key_value(DISTRIBUTION),
    "labeled_memory_distribution": key_value(DISTRIBUTION),
    "labeled_custom_distribution": key_value(DISTRIBUTION),
    "dual_labeled_counter": key_value(key_value(INT)),
    "object": JSON,
}

CLIENT_INFO = struct(
    app_build=STR,
    app_channel=STR,
    app_display_version=STR,
    architecture=STR,
    build_date=STR,
    client_id=STR,
    device_manufacturer=STR,
    device_model=STR,
    first_run_date=STR,
    locale=STR,
    os=STR,
    os_version=STR,
    telemetry_sdk_build=STR,
    android_sdk_version=STR,
    windows_build_number=INT,
    session_count=INT,
    session_id=STR,
    attribution=struct(campaign=STR, content=STR, medium=STR, source=STR, term=STR),
    distribution=struct(name=STR),
)

PING_INFO = struct(
    seq=INT,
    start_time=STR,
    end_time=STR,
    parsed_start_time=TS,
    parsed_end_time=TS,
    reason=STR,
    experiments=key_value(struct(branch=STR, extra=struct(type=STR, enrollment_id=STR))),
)

HEADER = struct(
    date=STR,
    parsed_date=TS,
    x_debug_id=STR,
    x_source_tags=STR,
    parsed_x_source_tags=list_of(STR),
    x_telemetry_agent=STR,
    user_agent=STR,
    content_length=STR,
)

METADATA = struct(header=HEADER, app_id=STR, document_type=STR, document_version=STR)

EVENT_SESSION = struct(session_id=STR, session_seq=INT, event_seq=INT, session_sample_rate=FLOAT,
                       session_start_time=STR)
EVENT = struct(category=STR, name=STR, timestamp=INT, extra=key_value(STR), session=EVENT_SESSION)

# The columns every ping table starts with; `metrics` is added (and widened) as metrics appear.
PING_COLUMNS: tuple[tuple[str, T], ...] = (
    ("submission_timestamp", TS),
    ("document_id", STR),
    ("sample_id", INT),
    ("normalized_channel", STR),
    ("normalized_os", STR),
    ("normalized_os_version", STR),
    ("client_info", CLIENT_INFO),
    ("ping_info", PING_INFO),
    ("metadata", METADATA),
    ("events", list_of(EVENT)),
    ("additional_properties", STR),
)

def metrics_struct(columns: dict[str, "Iterable[str]"]) -> T:
    """The ``metrics`` column for these metric columns: metric type -> STRUCT of its columns."""
    return T("STRUCT", tuple((mtype, T("STRUCT", tuple((c, METRIC_TYPES[mtype]) for c in sorted(cols))))
                             for mtype, cols in sorted(columns.items())))


# Each table `<ping>_v<version>` has a view `<ping>` (Mozilla's user-facing name), first row per
# document_id; events_stream_v1 has the view events_stream (first row per document_id, event_index).
EVENTS_STREAM_TABLE = "events_stream_v1"
EVENTS_STREAM_VIEW = "events_stream"
EVENTS_STREAM_COLUMNS: tuple[tuple[str, T], ...] = (
    ("submission_timestamp", TS),
    ("document_id", STR),
    ("event_index", INT),
    ("client_id", STR),
    ("ping", STR),
    ("sample_id", INT),
    ("normalized_channel", STR),
    ("normalized_os", STR),
    ("app_display_version", STR),
    ("category", STR),
    ("name", STR),
    ("timestamp", INT),
    ("event_timestamp", TS),
    ("extra", key_value(STR)),
)
