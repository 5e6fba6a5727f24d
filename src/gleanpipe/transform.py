"""Raw object -> typed rows: one ping-table row, its events_stream rows, and the metric
columns the row needs. Follows Mozilla's normalisation rules (see README, "Table layout").
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import orjson

from . import rawobject
from .naming import DocumentPath, column_name, is_column_name, parse_segments, PathError
from .nesting import MAX_JSON_DEPTH, ORJSON_MAX_DEPTH, ORJSON_TOO_DEEP, path_below, where_deeper
from .int64 import CLIENT_INFO_INTS, EVENTS_INTS, INT64_MAX, INT64_MIN, METRIC_INTS, PING_INFO_INTS, NotInt64
from .table_schema import CLIENT_INFO, METRIC_TYPES, PING_INFO

DELETION_REQUEST = "deletion-request"


class TransformError(ValueError):
    """A stored object that cannot become a row (kept in the errors table, not retried)."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


@dataclass
class PingRow:
    """One ping, ready to insert: the row and its events_stream rows as JSON (cheap to pass
    between processes), plus what the warehouse needs to know without parsing them."""

    key: str
    path: DocumentPath
    row_json: bytes
    events_json: list[bytes]
    metrics: dict[str, tuple[str, ...]]  # metric type -> columns the row fills
    client_id: str | None
    submission_timestamp: str
    stripped: bool = False  # a deletion request's row with its client id alone (load.deletion_only)

    @property
    def is_deletion_request(self) -> bool:
        return self.path.doc_type == DELETION_REQUEST


# --- normalisation (Mozilla's rules) --------------------------------------------------

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
OS_VERSION_RE = re.compile(r"[0-9]+(\.[0-9]+){0,2}")
CHANNELS = ("release", "esr", "beta", "aurora", "nightly")


def sample_id(client_id: str | None) -> int | None:
    if not client_id or not UUID_RE.fullmatch(client_id):
        return None
    return zlib.crc32(client_id.lower().encode("utf-8")) % 100


def normalize_channel(channel: str | None) -> str:
    if channel in CHANNELS:
        return channel
    if channel:
        if channel.startswith("beta"):
            return "beta"
        if channel.startswith("nightly-cck-"):
            return "nightly"
    return "Other"


def normalize_os(os_name: str | None) -> str:
    if not os_name:
        return "Other"
    if os_name.startswith(("Windows", "WINNT")):
        return "Windows"
    if os_name.startswith("Darwin"):
        return "Mac"
    if any(s in os_name for s in ("Linux", "BSD", "SunOS", "Solaris")):
        return "Linux"
    if os_name.startswith("iOS") or "iPhone" in os_name:
        return "iOS"
    if os_name.startswith("Android"):
        return "Android"
    return "Other"


def normalize_os_version(version: str | None) -> str | None:
    m = OS_VERSION_RE.match(version or "")
    return m.group(0) if m else None


GLEAN_TS_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?)?(Z|[+-]\d{2}:?\d{2})?"
)


def parse_glean_time(value) -> str | None:
    """Glean datetime string (any resolution) -> ISO UTC string, or None if unparseable."""
    if not isinstance(value, str):
        return None
    m = GLEAN_TS_RE.fullmatch(value)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    iso = f"{y}-{mo}-{d}T{h or '00'}:{mi or '00'}:{s or '00'}"
    if frac:
        iso += "." + frac[:6].ljust(6, "0")
    iso += "+00:00" if tz in (None, "Z") else (tz if ":" in tz else tz[:3] + ":" + tz[3:])
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).isoformat()
    except (ValueError, OverflowError):  # OverflowError: 9999-12-31T23:59-12:00 is past year 9999 in UTC
        return None


@functools.lru_cache(maxsize=4096)  # the Date header repeats within a second: parse each value once
def parse_http_date(value) -> str | None:
    """The Date header as ISO UTC. One with ``-0000`` or no zone is UTC (RFC 5322: ``-0000`` is UTC
    with nothing said about the local zone); before, it was read in the server's own zone."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc).isoformat()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# --- metric values -------------------------------------------------------------------


def _kv(mapping: dict) -> list[dict]:
    return [{"key": k, "value": v} for k, v in mapping.items()]


def _known(value: dict, names: tuple[str, ...], leftovers: dict) -> dict:
    """The fields of ``value`` its column has (each of ``names``, None when missing); the others go
    to ``leftovers`` (additional_properties)."""
    kept, extra = _split_known(value, frozenset(names))
    leftovers.update(extra)
    return {n: kept.get(n) for n in names}


def _distribution(value: dict, leftovers: dict) -> dict:
    value = _known(value, ("sum", "values"), leftovers)  # legacy fields (count, bucket_count, ...) kept aside
    values, odd = [], {}
    for k, v in value["values"].items():  # keys are digits (the schema's pattern)
        digits = k.lstrip("0") or "0"
        if len(digits) > 19:  # past 64 bits; and int() of 4,300 digits or more fails with Python's advice
            shown = k if len(k) <= 40 else f"{k[:20]}... ({len(k)} digits)"
            raise NotInt64(f"values key: {shown} is outside the 64-bit integer range ({INT64_MIN} to {INT64_MAX})")
        if digits == k:
            values.append({"key": int(k), "value": v})
        else:  # "01": as a key it would be the same bucket as "1"
            odd[k] = v
    if odd:
        leftovers["values"] = odd
    return {"sum": value.get("sum"), "values": values}


def _labeled(convert):
    """The converter of a labeled type whose values ``convert`` converts: a label's leftovers go
    to ``leftovers`` under the label, and only the labels that have some."""

    def labeled(value: dict, leftovers: dict) -> list[dict]:
        out = []
        for k, v in value.items():
            left: dict = {}
            try:
                out.append({"key": k, "value": convert(v, left)})
            except NotInt64 as exc:  # the label named as int64 names it: [label].values key
                raise NotInt64(f"[{k!r}].{exc}") from None
            if left:
                leftovers[k] = left
        return out
    return labeled


def _rate(value: dict, leftovers: dict) -> dict:
    return _known(value, ("numerator", "denominator"), leftovers)


# Glean metric type -> converter(value as sent, leftovers) -> value for its column (table_schema.METRIC_TYPES).
CONVERTERS = {
    **{t: (lambda v, _: v) for t in ("boolean", "counter", "quantity", "string", "uuid", "url", "text", "jwe",
                                     "datetime", "string_list", "object")},
    "timespan": lambda v, left: _known(v, ("time_unit", "value"), left),
    "rate": _rate,
    **{t: _distribution for t in ("timing_distribution", "memory_distribution", "custom_distribution")},
    **{t: (lambda v, _: _kv(v)) for t in ("labeled_boolean", "labeled_counter", "labeled_quantity",
                                          "labeled_string")},
    "labeled_rate": _labeled(_rate),
    **{t: _labeled(_distribution) for t in ("labeled_timing_distribution", "labeled_memory_distribution",
                                          "labeled_custom_distribution")},
    "dual_labeled_counter": lambda v, _: [{"key": k, "value": _kv(inner)} for k, inner in v.items()],
}
assert CONVERTERS.keys() == METRIC_TYPES.keys()


KNOWN_CLIENT_INFO = frozenset(name for name, _ in CLIENT_INFO.fields)
KNOWN_PING_INFO = frozenset(name for name, _ in PING_INFO.fields)


# client_info's struct fields, with the fields their columns have
CLIENT_INFO_STRUCTS = {name: tuple(n for n, _ in t.fields) for name, t in CLIENT_INFO.fields if t.fields}
EXPERIMENT_EXTRA = ("type", "enrollment_id")


def _experiments(experiments: dict, leftovers: dict) -> list[dict]:
    """ping_info.experiments as key/value rows; fields their columns do not have go to ``leftovers``."""
    rows = []
    for name, value in experiments.items():
        if not isinstance(value, dict):
            leftovers[name] = value
            continue
        left: dict = {}
        row = _known(value, ("branch", "extra"), left)
        if isinstance(row["extra"], dict):
            extra_left: dict = {}
            row["extra"] = _known(row["extra"], EXPERIMENT_EXTRA, extra_left)
            if extra_left:
                left["extra"] = extra_left
        if left:
            leftovers[name] = left
        rows.append({"key": name, "value": row})
    return rows


def _split_known(section: dict, known: frozenset) -> tuple[dict, dict]:
    if section.keys() <= known:
        return dict(section), {}
    return ({k: v for k, v in section.items() if k in known}, {k: v for k, v in section.items() if k not in known})


# --- the transform -------------------------------------------------------------------

# What the edge writes (``2026-11-23T08:00:00.000000Z``), and the other ISO 8601 forms both
# warehouses read as a point in time: a date, a time to the minute at least, and a UTC offset.
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)")


def submission_time_problem(value) -> str | None:
    """Why a raw object's ``submission_timestamp`` (from its metadata line) is not one, or None.
    The edge always writes one; an object written some other way may lack it or hold anything."""
    if value is None:
        return "the metadata has no submission_timestamp"
    if isinstance(value, str) and TIMESTAMP_RE.fullmatch(value):
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            at = None
        if at is not None:
            try:  # BigQuery's TIMESTAMP (and Python's datetime) holds 0001-01-01..9999-12-31 in UTC
                at.astimezone(timezone.utc)
                return None
            except OverflowError:
                return f"the metadata's submission_timestamp is before 0001-01-01 or after 9999-12-31 in UTC: {value}"
    try:
        shown = str(orjson.dumps(value), "utf-8")[:60]
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
        shown = f"a JSON {'array' if isinstance(value, list) else 'object'} nested too deep to show"
    return f"the metadata's submission_timestamp is not a timestamp with a UTC offset: {shown}"


def transform(key: str, data: bytes, path: DocumentPath | None = None) -> PingRow:
    """Build the row for one raw object. Raises TransformError for objects that cannot load.

    ``path``: the object's parsed key, when the caller has it (the metadata must agree).
    """
    try:
        meta, payload = rawobject.decode(data)
    except rawobject.RawObjectError as exc:
        raise TransformError("raw_object", str(exc)) from None
    try:
        if path is None or meta.get("key") != path.key:
            path = parse_segments(meta["app_id"], meta["doc_type"], meta["version"], meta["document_id"])
    except (KeyError, TypeError, PathError) as exc:
        raise TransformError("raw_object", f"bad path metadata: {exc}") from None
    # before the row: a NULL one made a row outside every day's partition, and BigQuery's loader
    # failed on anything but a string when it recorded a deletion request (for good: no load error)
    problem = submission_time_problem(meta.get("submission_timestamp"))
    if problem:
        raise TransformError("raw_object", problem)
    try:
        ping = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise TransformError("json", f"payload is not JSON: {exc}") from None
    if not isinstance(ping, dict):
        raise TransformError("schema", "payload is not a JSON object")
    exact = exact_integers(payload)
    dumps = orjson.dumps if exact is None else _dumps
    ping = exact if exact is not None else ping
    try:
        return _build(key, path, meta, ping, dumps)
    except NotInt64 as exc:
        raise TransformError("transform", str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        # a row nests an object metric's value (and additional_properties a ping's unknown fields) as
        # deep as the ping does, and orjson writes at most ORJSON_MAX_DEPTH levels
        if str(exc) == ORJSON_TOO_DEEP and path_below(ping, ORJSON_MAX_DEPTH) is not None:
            raise TransformError("transform", too_deep_to_load(ping)) from None
        raise TransformError("transform", f"{type(exc).__name__}: {exc}") from None


class WideInt(int):
    """A JSON integer outside what orjson reads as one (-2**63 to 2**64-1): orjson reads it as the
    nearest float, so that ``{"n": 100000000000000000000000000001}`` in an object metric, or in a
    field that goes to additional_properties, was stored as ``1e+29``. Kept as the integer sent: a
    BIGINT field refuses it by its value (int64.py), and the row writes it as its digits
    (``_dumps``)."""


# an integer orjson does not read exactly has at least 19 digits (-9223372036854775809,
# 18446744073709551616): a payload without such a run of digits needs nothing more
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _wide_or_int(text: str) -> int:
    value = int(text)
    return value if INT64_MIN <= value < 2**64 else WideInt(value)


def exact_integers(payload: bytes) -> dict | None:
    """The ping read again with its integers as sent, when it may have one that orjson read as a
    rounded float (a run of 19 digits or more); None when it has none (the usual case), or cannot be
    read that way (it is read as orjson read it). orjson has read the same payload already, so the
    JSON is valid and both readers agree on everything else (a repeated key: the last one)."""
    if not _LONG_DIGITS.search(payload):
        return None
    try:
        doc = json.loads(payload, parse_int=_wide_or_int)
    except (ValueError, RecursionError):  # 4,300 digits or more, or nested past Python's recursion limit
        return None
    return doc if isinstance(doc, dict) else None


def _wide_default(value):
    if isinstance(value, WideInt):
        return orjson.Fragment(str(int(value)).encode())
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _dumps(value) -> bytes:
    """orjson.dumps, writing a WideInt as its digits (orjson refuses an int past 64 bits)."""
    return orjson.dumps(value, default=_wide_default, option=orjson.OPT_PASSTHROUGH_SUBCLASS)


def too_deep_to_load(ping: dict) -> str:
    """The load error of a ping nested deeper than its row can be written: one the edge took before
    it refused pings past MAX_JSON_DEPTH, or stored some other way."""
    return (f"the ping nests JSON deeper than {ORJSON_MAX_DEPTH} levels, the most its row can be written with, "
            f"so it cannot load: {where_deeper(ping, ORJSON_MAX_DEPTH)} (the edge now refuses pings nested "
            f"deeper than {MAX_JSON_DEPTH} levels: MAX_JSON_DEPTH)")


def _build(key: str, path: DocumentPath, meta: dict, ping: dict, dumps=orjson.dumps) -> PingRow:
    """``dumps``: what writes the row (``_dumps`` for a ping read by ``exact_integers``)."""
    additional: dict = {k: v for k, v in ping.items() if k not in ("client_info", "ping_info", "metrics", "events")}
    client_info = _client_info(ping.get("client_info") or {}, additional)
    ping_info = _ping_info(ping.get("ping_info") or {}, additional)
    metrics_row, metric_columns = _metrics(ping.get("metrics") or {}, additional)

    client_id = client_info.get("client_id")
    client_id = client_id.lower() if isinstance(client_id, str) else None
    if client_id:
        client_info["client_id"] = client_id
    submission_timestamp = meta["submission_timestamp"]
    norm = {
        "sample_id": sample_id(client_id),
        "normalized_channel": normalize_channel(client_info.get("app_channel")),
        "normalized_os": normalize_os(client_info.get("os")),
        "normalized_os_version": normalize_os_version(client_info.get("os_version")),
    }
    events, stream = _events(ping.get("events") or [], {
        "submission_timestamp": submission_timestamp,
        "document_id": path.document_id,
        "client_id": client_id,
        "ping": path.doc_type,
        "sample_id": norm["sample_id"],
        "normalized_channel": norm["normalized_channel"],
        "normalized_os": norm["normalized_os"],
        "app_display_version": client_info.get("app_display_version"),
    })

    CLIENT_INFO_INTS(client_info, "client_info")
    PING_INFO_INTS(ping_info, "ping_info")
    EVENTS_INTS(events, "events")
    row = {
        "submission_timestamp": submission_timestamp,
        "document_id": path.document_id,
        **norm,
        "client_info": client_info or None,
        "ping_info": ping_info,
        "metadata": _metadata(meta.get("headers") or {}, path),
        # lists are [] when absent, never NULL: a BigQuery REPEATED column cannot be NULL, so
        # ARRAY_LENGTH(events) (and an AVG over it) gives the same on both warehouses
        "events": events,
        "additional_properties": dumps(additional).decode() if additional else None,
    }
    if metrics_row:
        row["metrics"] = metrics_row
    return PingRow(key, path, dumps(row), [dumps(e) for e in stream], metric_columns, client_id,
                   submission_timestamp)


def _client_info(section: dict, additional: dict) -> dict:
    """client_info's known fields; the rest (also inside attribution and distribution) goes to
    ``additional["client_info"]``."""
    client_info, extra = _split_known(section, KNOWN_CLIENT_INFO)
    for name, fields in CLIENT_INFO_STRUCTS.items():  # attribution, distribution: their own extra fields
        if isinstance(client_info.get(name), dict):
            left: dict = {}
            client_info[name] = _known(client_info[name], fields, left)
            if left:
                extra[name] = left
    if extra:
        additional["client_info"] = extra
    return client_info


def _ping_info(section: dict, additional: dict) -> dict:
    """ping_info's known fields, with the start and end times parsed and experiments as a list;
    the rest goes to ``additional["ping_info"]``."""
    ping_info, extra = _split_known(section, KNOWN_PING_INFO)
    if extra:
        additional["ping_info"] = extra
    # a ping without ping_info (include_info_sections: false) has one too, with its fields NULL and
    # experiments [] (a list is never NULL, as on BigQuery: see "events" in _build)
    ping_info["parsed_start_time"] = parse_glean_time(ping_info.get("start_time"))
    ping_info["parsed_end_time"] = parse_glean_time(ping_info.get("end_time"))
    if isinstance(ping_info.get("experiments"), dict):
        left: dict = {}
        ping_info["experiments"] = _experiments(ping_info["experiments"], left)
        if left:
            additional.setdefault("ping_info", {})["experiments"] = left
    ping_info.setdefault("experiments", [])
    return ping_info


def _metrics(metrics: dict, additional: dict) -> tuple[dict[str, dict], dict[str, tuple[str, ...]]]:
    """The ``metrics`` struct (type -> column -> value) and its columns per type; what makes no
    column (an unknown type, an id that is no column name, a value's unknown parts) goes to
    ``additional["metrics"]``."""
    metrics_row: dict[str, dict] = {}
    metric_columns: dict[str, tuple[str, ...]] = {}
    metric_extra: dict = {}
    for metric_type, values in metrics.items():
        if metric_type not in METRIC_TYPES or not isinstance(values, dict):
            metric_extra[metric_type] = values
            continue
        columns: dict = {}
        convert = CONVERTERS[metric_type]
        for metric_id, value in values.items():
            col = column_name(metric_id)
            # an id that makes no column name (``a-b.c``), or a second id of this column (``a.b`` and
            # ``a_b``, or ``A.b``): kept aside, never a write the warehouse refuses
            if col in columns or not is_column_name(col):
                metric_extra.setdefault(metric_type, {})[metric_id] = value
                continue
            leftovers: dict = {}
            try:
                columns[col] = convert(value, leftovers)
            except NotInt64 as exc:  # where in the value (values key, or [label].values key) and why
                rest = str(exc)
                raise NotInt64(f"metrics.{metric_type}.{metric_id}{'' if rest.startswith('[') else '.'}{rest}") from None
            if METRIC_INTS[metric_type]:
                METRIC_INTS[metric_type](columns[col], f"metrics.{metric_type}.{metric_id}")
            if leftovers:
                metric_extra.setdefault(metric_type, {})[metric_id] = leftovers
        if columns:
            metrics_row[metric_type] = columns
            metric_columns[metric_type] = tuple(columns)
    if metric_extra:
        additional["metrics"] = metric_extra
    return metrics_row, metric_columns


def _events(ping_events: list, stream_fields: dict) -> tuple[list[dict], list[dict]]:
    """The row's ``events`` list, and one events_stream row per event (``stream_fields``: the
    ping's part of each)."""
    events, stream = [], []
    for index, event in enumerate(ping_events):
        event_extra = event.get("extra") or {}
        extra_kv = _kv(event_extra)
        events.append({
            "category": event.get("category"),
            "name": event.get("name"),
            "timestamp": event.get("timestamp"),
            "extra": extra_kv,
            "session": event.get("session"),
        })
        stream.append({
            "submission_timestamp": stream_fields["submission_timestamp"],
            "document_id": stream_fields["document_id"],
            "event_index": index,  # third, as events_stream's columns go
            **stream_fields,
            "category": event.get("category"),
            "name": event.get("name"),
            "timestamp": event.get("timestamp"),
            "event_timestamp": _unix_ms(event_extra.get("glean_timestamp")),
            "extra": extra_kv,
        })
    return events, stream


def _metadata(headers: dict, path: DocumentPath) -> dict:
    source_tags = headers.get("x_source_tags")
    return {
        "header": {
            "date": headers.get("date"),
            "parsed_date": parse_http_date(headers.get("date")),
            "x_debug_id": headers.get("x_debug_id"),
            "x_source_tags": source_tags,
            "parsed_x_source_tags": [t.strip() for t in source_tags.split(",")] if source_tags else [],
            "x_telemetry_agent": headers.get("x_telemetry_agent"),
            "user_agent": headers.get("user_agent"),
            "content_length": headers.get("content_length"),
        },
        "app_id": path.app_id,
        "document_type": path.doc_type,
        "document_version": path.version,
    }


# Unix ms as the Glean SDK writes extra.glean_timestamp: ASCII digits (int() also took "1_000" and
# other scripts' digits, "١٢٣", which BigQuery's SAFE_CAST to INT64 makes NULL)
UNIX_MS_RE = re.compile(r"[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _unix_ms(value) -> str | None:
    """extra.glean_timestamp as ISO UTC, exact to the millisecond, or None. Counted from the epoch
    with a timedelta: fromtimestamp(ms / 1000) went through a float, which past about year 2200 is
    off by microseconds (253402300799999 gave 9999-12-31T23:59:59.998993)."""
    if isinstance(value, str):
        if not UNIX_MS_RE.fullmatch(value):
            return None
    elif not isinstance(value, int) or isinstance(value, bool):
        return None
    try:
        return (EPOCH + timedelta(milliseconds=int(value))).isoformat()
    except (ValueError, OverflowError):  # before year 1 or after 9999; ValueError: 4,300 digits or more
        return None
